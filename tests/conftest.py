"""Every test that takes ``impl`` runs once per core: the compiled one and its pure-Python twin."""

import os

import pytest

from fastconsumer import _core_py, core

IMPLS = {"python": _core_py}
if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") != "1":
    # Not a skip: a checkout whose extension did not build must fail here, not quietly test the twin twice.
    from fastconsumer import _core_c

    IMPLS["cython"] = _core_c


@pytest.fixture(params=sorted(IMPLS))
def impl(request, monkeypatch):
    """The core module under test; consumers created in the test use it."""
    monkeypatch.setattr(core, "impl", IMPLS[request.param])
    return IMPLS[request.param]


# --------------------------------------------------------------------------------------------------
# Kafka: one broker for the session, a fresh topic per test (helpers in tests/kafka_helpers.py)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """The bootstrap address of a running Kafka broker.

    ``$FASTCONSUMER_TEST_BOOTSTRAP`` names an external one (e.g. ``docker compose up -d``: localhost:9092);
    otherwise one ``dev/broker.py`` LocalBroker runs for the whole session. A broker that cannot start or
    be reached FAILS the tests that need it, never skips them: in CI a Kafka test that skips is a failure.
    """
    from tests.kafka_helpers import session_broker

    yield from session_broker()


def pytest_collection_modifyitems(items):
    """Marks ``kafka`` the tests that need a broker (Java 17, Maven); ``pytest -m "not kafka"`` skips them."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()) or item.path.name.startswith(
            ("test_kafka", "test_broker")
        ):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture
def kafka_topic(kafka_bootstrap):
    """A new topic ``t-<uuid>`` with 4 partitions, each with a leader; deleted (best effort) afterwards."""
    import uuid

    from tests.kafka_helpers import create_topic, delete_topic

    topic = f"t-{uuid.uuid4().hex}"
    create_topic(kafka_bootstrap, topic, partitions=4)
    yield topic
    delete_topic(kafka_bootstrap, topic)
