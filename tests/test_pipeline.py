"""The client's pipeline: steps chosen once from the settings; malformed settings refused."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedsim import protocol
from fedsim.client.app import app as client_app
from fedsim.client.pipeline import (
    DPTrainer,
    HEProtector,
    Job,
    PlainProtector,
    PlainTrainer,
    steps_for,
)
from fedsim.settings import ClientSettings, HESettings
from tests.attacks import harness
from tests.attacks.conftest import digits, task_identity  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("task_identity")


def job(settings: dict) -> Job:
    msg = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0},
                      state=RecordDict(), run_config={})
    return Job(msg=msg, context=context, settings=ClientSettings.decode(json.dumps(settings)),
               client_id=0)


def test_steps_follow_the_settings():
    dp_he = {**harness.settings(), "he": asdict(HESettings(fingerprint="ab" * 32, clients=2))}
    plain = steps_for(job({**harness.settings(), "dp": None}))
    private = steps_for(job(dp_he))
    assert isinstance(plain.trainer, PlainTrainer)
    assert isinstance(plain.protector, PlainProtector)
    assert isinstance(private.trainer, DPTrainer)
    assert isinstance(private.protector, HEProtector)


def test_a_plain_round_trains_and_sends_its_loss(tmp_path, digits):  # noqa: F811
    site = harness.SimulatedClient(harness.store(tmp_path / "data", *digits))
    reply = site.train(harness.initial_state(), {**harness.settings(), "dp": None}, 1)
    metrics = dict(reply.content[protocol.METRICS])
    assert protocol.TRAIN_LOSS in metrics and protocol.DP_EPSILON not in metrics
    assert metrics[protocol.NUM_EXAMPLES] == len(digits[1])
    assert not np.array_equal(harness.flat(harness.reply_state(reply)),
                              harness.flat(harness.initial_state()))


def _send(kind: str, config: ConfigRecord) -> Message:
    msg = Message(RecordDict({protocol.ARRAYS: ArrayRecord(harness.initial_state()),
                              protocol.CONFIG: config}),
                  dst_node_id=1, message_type=kind)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0},
                      state=RecordDict(), run_config={})
    return client_app(msg, context)


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
@pytest.mark.parametrize("text", ["{", json.dumps({**harness.settings(), "lr": "fast"}),
                                  json.dumps({**harness.settings(), "dp": True}), None])
def test_malformed_settings_are_one_refused_reply(kind, text):
    config = ConfigRecord({protocol.ROUND: 1})
    if text is not None:
        config[protocol.SETTINGS] = text
    reply = _send(kind, config)
    assert reply.has_error() and reply.error.code == protocol.SITE_ERROR
    assert "settings" in reply.error.reason and "\n" not in reply.error.reason
