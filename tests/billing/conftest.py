import pytest
from fakes.lago_fake import LagoFake
from fakes.openmeter_fake import OpenMeterFake
from fakes.stripe_fake import StripeFake
from push_helpers import LAGO_KEY, OM_TOKEN, STRIPE_KEY


@pytest.fixture
def stripe_fake():
    with StripeFake(api_key=STRIPE_KEY, meters={"api_requests": "mtr_api"}) as fake:
        yield fake


@pytest.fixture
def lago_fake():
    with LagoFake(api_key=LAGO_KEY) as fake:
        yield fake


@pytest.fixture
def openmeter_fake():
    with OpenMeterFake(token=OM_TOKEN) as fake:
        yield fake


@pytest.fixture
def fakes(stripe_fake, lago_fake, openmeter_fake):
    return {"stripe": stripe_fake, "lago": lago_fake, "openmeter": openmeter_fake}


@pytest.fixture
def allow(fakes):
    return ",".join(f.hostport for f in fakes.values())
