"""The fedsim ClientApp: Flower Message API (`@app.query`, `@app.train`, `@app.evaluate`).

Everything a client needs arrives in the message (model spec and settings as JSON,
the global model in plaintext or encrypted); its identity and data come from its
node config. A round is a pipeline chosen once from the settings
(`client/pipeline.py`): receive the global (decrypted under HE), train (DP-SGD when
on, after a budget check), protect the update (encrypted under HE), reply.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import protocol
from fedsim.client.local_data import client_data, message_settings, train_size
from fedsim.client.pipeline import Job, Steps, steps_for
from fedsim.client.policy import make_site_guard
from fedsim.fedmodels.models import build_model
from fedsim.fedmodels.training import evaluate

# The site guard refuses runs that break the site's policy before any training, and
# turns site errors (missing data, bad key files, malformed settings) into one-line
# error replies.
app = ClientApp(mods=[make_site_guard(train_size)])


def client_id(context: Context) -> int:
    """This node's stable client id (its partition id)."""
    return int(context.node_config["partition-id"])


def _steps(msg: Message, context: Context) -> Steps:
    """This message's pipeline, from its settings (decoded and checked once)."""
    job = Job(msg=msg, context=context, settings=message_settings(msg),
              client_id=client_id(context))
    return steps_for(job)


def _received(steps: Steps, stage: str) -> torch.nn.Module:
    """The run's model holding the global state the message carries."""
    model = build_model(steps.job.settings.model)
    steps.protector.receive(model, stage=stage)
    return model


def _metrics_reply(msg: Message, metrics: dict) -> Message:
    return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Handshake: tell the server which client this node is."""
    return _metrics_reply(msg, {protocol.CLIENT_ID: client_id(context)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's local data."""
    torch.set_num_threads(1)
    steps = _steps(msg, context)
    cid = steps.job.client_id
    model = _received(steps, "train")
    x, y = client_data(msg, context, cid, "train")
    trained = steps.trainer.train(model, x, y)
    content = RecordDict({protocol.METRICS: MetricRecord(
        {protocol.NUM_EXAMPLES: len(y), protocol.CLIENT_ID: cid, **trained.metrics})})
    if trained.update:  # a spent DP budget: nothing trained, nothing released
        for key, record in steps.protector.seal(model, weight=len(y)).items():
            content[key] = record
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's validation split."""
    torch.set_num_threads(1)
    steps = _steps(msg, context)
    cid = steps.job.client_id
    instead = steps.trainer.before_evaluation()
    if instead is not None:  # e.g. its DP budget is spent: no more metrics
        return _metrics_reply(msg, {protocol.CLIENT_ID: cid, **instead})
    model = _received(steps, "evaluate")
    x, y = client_data(msg, context, cid, "val")
    loss, acc = evaluate(model, x, y, device=steps.job.device)
    return _metrics_reply(msg, {protocol.NUM_EXAMPLES: len(y), protocol.EVAL_LOSS: loss,
                                protocol.EVAL_ACC: acc, protocol.CLIENT_ID: cid})
