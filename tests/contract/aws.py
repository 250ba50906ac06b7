"""AWS: moto behind the faithful API Gateway front (``fakes.aws_gateway.AwsFake``), shared and reset."""

from __future__ import annotations

from datetime import date
from typing import Any

from fakes.aws_gateway import AwsFake

from . import Harness


class AwsHarness(Harness):
    name = "aws"
    apis = ("petstore/prod",)
    usage_metric = "success"
    _fake: AwsFake | None = None

    def start(self) -> None:
        if AwsHarness._fake is None:  # one moto server for the session: starting it takes a while
            AwsHarness._fake = AwsFake().__enter__()
        self.fake = AwsHarness._fake
        self.fake.reset()
        self.fake.add_rest_api("petstore", ["prod"])

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.fake.endpoint_url, "APIMON_AWS_QUOTA_SCALE": "200",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def target(self, tmp_path: Any) -> str:
        return "{provider: aws, aws: {region: us-east-1}}"

    def seed_unmanaged(self) -> None:
        mc = self.fake.moto_client()
        legacy = mc.create_usage_plan(name="legacy", description="hand made")["id"]
        key = mc.create_api_key(name="ops", enabled=True)["id"]
        mc.create_usage_plan_key(usagePlanId=legacy, keyId=key, keyType="API_KEY")

    def unmanaged_state(self) -> Any:
        mc = self.fake.moto_client()
        plans = [p for p in mc.get_usage_plans()["items"] if p["name"] == "legacy"]
        keys = [k for k in mc.get_api_keys(includeValues=True)["items"] if k["name"] == "ops"]
        members = [mc.get_usage_plan_keys(usagePlanId=p["id"])["items"] for p in plans]
        return plans, keys, members

    def _id(self, kind: str, name: str) -> str:
        mc = self.fake.moto_client()
        items = mc.get_usage_plans()["items"] if kind == "plan" else mc.get_api_keys()["items"]
        return next(i["id"] for i in items if i["name"] == name and "apimon:managed" in (i.get("tags") or {}))

    def change_description(self, product: str, text: str) -> None:
        self.fake.moto_client().update_usage_plan(usagePlanId=self._id("plan", product), patchOperations=[
            {"op": "replace", "path": "/description", "value": text}])

    def record_usage(self, subscriber: str, product: str, day: date, count: int) -> None:
        self.fake.set_usage(self._id("plan", product), self._id("key", subscriber), day, count, 1000 - count)


HARNESS = AwsHarness()
