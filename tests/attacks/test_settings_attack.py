"""A malicious server sizes the work in the settings to exhaust a site.

Adversary: the server, with everything it sends in a message. The site refuses, in
one reply and before building a model or reading data, settings whose sizes could
only exhaust its memory or time (protocol.SETTING_LIMITS, MAX_INPUT, MAX_CLASSES).
"""

import json
import resource
import time

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedsim import protocol
from fedsim.client.app import app as client_app
from tests.attacks import harness
from tests.attacks.conftest import task_identity  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("task_identity")


def _model(**changes) -> dict:
    return {**harness.settings()["model"], **changes}


@pytest.mark.parametrize("changes", [
    {"local_epochs": 10**18},
    {"batch_size": 10**15},
    {"rounds": 10**12},
    {"seed": -1},
    {"model": _model(num_classes=10**12)},
    {"model": _model(input_shape=[1, 10**6, 10**6])},
    {"model": _model(input_shape=[1] * 100_000)},
    {"model": _model(name="text", input_shape=[10**12], vocab_size=2)},
    {"model": _model(name="text", input_shape=[3 * 1024 * 1024], vocab_size=100)},
    {"model": _model(input_shape=[1, 1024, 3072], num_classes=100_000)},
    {"dp": {**harness.settings()["dp"], "noise_multiplier": None,
            "target_epsilon": 1e300}},
    {"dp": {**harness.settings()["dp"], "delta": 1e-300}},
])
@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
def test_attack_oversized_work_is_refused_before_any_allocation(changes, kind):
    settings = {**harness.settings(), **changes}
    config = ConfigRecord({protocol.ROUND: 1, protocol.SETTINGS: json.dumps(settings)})
    msg = Message(RecordDict({protocol.ARRAYS: ArrayRecord(harness.initial_state()),
                              protocol.CONFIG: config}), dst_node_id=1, message_type=kind)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0},
                      state=RecordDict(), run_config={})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    reply = client_app(msg, context)
    assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert reply.has_error() and reply.error.code == protocol.SITE_ERROR
    reason = reply.error.reason
    assert "settings are malformed" in reason and "\n" not in reason and len(reason) < 600
