"""Azure: the ARM fake (``fakes.azure_apim``), driven through the real azure-mgmt-apimanagement SDK."""

from __future__ import annotations

import copy
import datetime as dt
from datetime import date
from typing import Any

from fakes.azure_apim import AzureApimFake

from . import Harness

RG, SVC = "rg", "apim"


class AzureHarness(Harness):
    name = "azure"

    def start(self) -> None:
        self.fake = AzureApimFake(subscription_id="sub-1", resource_group=RG, service=SVC).__enter__()
        self.fake.add_api("petstore", "Petstore", "petstore")

    def stop(self) -> None:
        self.fake.__exit__(None, None, None)

    def env(self) -> dict[str, str]:
        from conftest import allow_endpoints

        return {"APIMON_AZURE_TOKEN": "test-token", "APIMON_AZURE_RETRY_BACKOFF": "0.01",
                **allow_endpoints(self.fake.base_url)}

    def target(self, tmp_path: Any) -> str:
        return (f"{{provider: azure, azure: {{subscription_id: sub-1, resource_group: {RG}, service: {SVC}, "
                f"endpoint: '{self.fake.base_url}'}}}}")

    def seed_unmanaged(self) -> None:
        from azure.mgmt.apimanagement.models import ProductContract, SubscriptionCreateParameters

        c = self.fake.client()
        c.product.create_or_update(RG, SVC, "legacy", ProductContract(display_name="Legacy",
                                                                      subscription_required=True, state="published"))
        c.subscription.create_or_update(RG, SVC, "ops", SubscriptionCreateParameters(
            scope="/products/legacy", display_name="Ops", state="active"))
        c.close()

    def unmanaged_state(self) -> Any:
        f = self.fake
        return copy.deepcopy((f.products.get("legacy"), f.product_tags.get("legacy"), f.subscriptions.get("ops")))

    def change_description(self, product: str, text: str) -> None:
        from azure.mgmt.apimanagement.models import ProductUpdateParameters

        c = self.fake.client()
        c.product.update(RG, SVC, product, if_match="*", parameters=ProductUpdateParameters(description=text))
        c.close()

    def record_usage(self, subscriber: str, product: str, day: date, count: int) -> None:
        when = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
        self.fake.record_calls(f"apimon-{subscriber}", product, when, success=count)


HARNESS = AzureHarness()
