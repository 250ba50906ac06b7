"""``target.apigee``: the plan-file block of the Apigee target."""

from __future__ import annotations

from pydantic import Field

from ...planfile.schema import Strict, Text
from .spec import DEFAULT_ENDPOINT


class ApigeeTarget(Strict):
    organization: Text
    environments: list[Text] = Field(min_length=1)
    endpoint: Text = DEFAULT_ENDPOINT
