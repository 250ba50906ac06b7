"""Apigee: the Apigee fake (``fakes.apigee``), reached through google-auth's AuthorizedSession."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from fakes.apigee import ApigeeFake

from . import Harness

ORG = "acme"


class ApigeeHarness(Harness):
    name = "apigee"

    def start(self) -> None:
        self.fake = ApigeeFake(org=ORG, environments=["prod"], proxies=["petstore"]).__enter__()

    def stop(self) -> None:
        self.fake.__exit__(None, None, None)

    def env(self) -> dict[str, str]:
        from conftest import allow_endpoints

        return {"APIMON_APIGEE_TOKEN": "test-token", **allow_endpoints(self.fake.endpoint)}

    def target(self, tmp_path: Any) -> str:
        return (f"{{provider: apigee, apigee: {{organization: {ORG}, environments: [prod], "
                f"endpoint: '{self.fake.endpoint}'}}}}")

    def seed_unmanaged(self) -> None:
        self.fake.add_product("legacy", environments=["prod"])
        self.fake.add_app("ops@team.example", "ops", api_products=["legacy"])

    def unmanaged_state(self) -> Any:
        f = self.fake
        return copy.deepcopy((f.products.get("legacy"), f.developers.get("ops@team.example"),
                              f.apps.get("ops@team.example")))

    def change_description(self, product: str, text: str) -> None:
        with self.fake._lock:
            self.fake.products[product]["description"] = text

    def record_usage(self, subscriber: str, product: str, day: date, count: int) -> None:
        self.fake.record_traffic("prod", product, subscriber, day, count)


HARNESS = ApigeeHarness()
