"""``target.aws``: the plan-file block of the AWS target."""

from __future__ import annotations

from ...planfile.schema import Strict, Text


class AwsTarget(Strict):
    region: Text
    profile: Text | None = None
    endpoint_url: Text | None = None
