"""``target.azure``: the plan-file block of the Azure target."""

from __future__ import annotations

from typing import Literal

from ...planfile.schema import Strict, Text


class AzureTarget(Strict):
    subscription_id: Text
    resource_group: Text
    service: Text
    cloud: Literal["public", "china", "usgovernment"] = "public"
    endpoint: Text | None = None
