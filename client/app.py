"""The fedsim ClientApp: Flower Message API (`@app.query`, `@app.train`, `@app.evaluate`).

Everything a client needs to train arrives in the message (model spec and training
settings as JSON, the global arrays); the client's identity and data come from its
node config. Flower types stay in this module; the work is in `training`.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import protocol
from fedsim.client.training import (
    evaluate,
    resolve_device,
    seeded_generator,
    train_epochs,
)
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.store import open_store

app = ClientApp()


def client_id(context: Context) -> int:
    """This node's stable client id (its partition id)."""
    return int(context.node_config["partition-id"])


def _settings(msg: Message) -> dict:
    config = msg.content[protocol.CONFIG]
    return protocol.decode_settings(str(config[protocol.SETTINGS]))


def _model_from(msg: Message, settings: dict) -> torch.nn.Module:
    model = build_model(ModelSpec.from_dict(settings["model"]))
    model.load_state_dict(msg.content[protocol.ARRAYS].to_torch_state_dict())
    return model


def _data_dir(msg: Message, context: Context) -> str:
    config = msg.content[protocol.CONFIG]
    if protocol.DATA_DIR in config:
        return str(config[protocol.DATA_DIR])
    return str(context.node_config["data-dir"])


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Handshake: tell the server which client this node is."""
    reply = MetricRecord({protocol.CLIENT_ID: client_id(context)})
    return Message(RecordDict({protocol.METRICS: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's local data."""
    torch.set_num_threads(1)
    cid = client_id(context)
    settings = _settings(msg)
    server_round = int(msg.content[protocol.CONFIG][protocol.ROUND])
    model = _model_from(msg, settings)
    x, y = open_store(_data_dir(msg, context)).client_data(cid, "train")
    result = train_epochs(
        model,
        x,
        y,
        epochs=int(settings["local_epochs"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]),
        device=resolve_device(settings["device"]),
        generator=seeded_generator(int(settings["seed"]), server_round, cid),
    )
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: result.num_examples,
            protocol.TRAIN_LOSS: result.loss,
            protocol.CLIENT_ID: cid,
        }
    )
    arrays = ArrayRecord(model.cpu().state_dict())
    return Message(
        RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics}), reply_to=msg
    )


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's validation split."""
    torch.set_num_threads(1)
    cid = client_id(context)
    settings = _settings(msg)
    model = _model_from(msg, settings)
    x, y = open_store(_data_dir(msg, context)).client_data(cid, "val")
    loss, acc = evaluate(model, x, y, device=resolve_device(settings["device"]))
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: len(y),
            protocol.EVAL_LOSS: loss,
            protocol.EVAL_ACC: acc,
            protocol.CLIENT_ID: cid,
        }
    )
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


__all__ = ["app", "ConfigRecord"]
