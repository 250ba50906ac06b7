"""``target.local``: the plan-file block of the local target."""

from __future__ import annotations

from pydantic import Field

from ...planfile.schema import Strict, Text


class LocalTarget(Strict):
    state_dir: Text = ".apimon"
    upstreams: dict[str, Text] = Field(
        default_factory=dict, description="API name -> upstream base URL, for `apimon gateway serve`."
    )
