"""The fedsim ClientApp: Flower Message API (`@app.query`, `@app.train`, `@app.evaluate`).

Everything a client needs arrives in the message (model spec and settings as JSON,
the global model in plaintext or encrypted); its identity and data come from its
node config. A round is composed of small steps: receive the global model (decrypt
under HE), train (DP-SGD when on, after a budget check), reply (encrypt under HE).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import protocol
from fedsim.client.local_data import client_data, train_size
from fedsim.client.policy import make_site_guard
from fedsim.client.training import (
    evaluate,
    proximal_mu,
    resolve_device,
    seeded_generator,
    train_epochs,
)
from fedsim.fedmodels.models import ModelSpec, build_model

# The site guard refuses runs that break the site's policy before any training, and
# turns site errors (missing data, bad key files) into one-line error replies.
app = ClientApp(mods=[make_site_guard(train_size)])


def client_id(context: Context) -> int:
    """This node's stable client id (its partition id)."""
    return int(context.node_config["partition-id"])


def _settings(msg: Message) -> dict:
    config = msg.content[protocol.CONFIG]
    return protocol.decode_settings(str(config[protocol.SETTINGS]))


def _he_context(msg: Message, settings: dict, context: Context):
    """This site's HE session (its own keys, checked against the run), or None."""
    if not settings.get("he"):
        return None
    from fedsim.client.he_step import session_for

    data_dir = msg.content[protocol.CONFIG].get(protocol.DATA_DIR)
    return session_for(settings["he"], context, None if data_dir is None else str(data_dir),
                       flower_run=int(msg.metadata.run_id))


def _receive_model(msg: Message, settings: dict, he_ctx, stage: str) -> torch.nn.Module:
    """Build the model and load the global state (verified and decrypted under HE)."""
    model = build_model(ModelSpec.from_dict(settings["model"]))
    record = msg.content[protocol.ARRAYS]
    if he_ctx is None:
        model.load_state_dict(record.to_torch_state_dict())
    else:
        from fedsim.client.he_step import global_state

        server_round = int(msg.content[protocol.CONFIG][protocol.ROUND])
        model.load_state_dict(global_state(record, model, he_ctx, settings=settings,
                                           server_round=server_round, stage=stage))
    return model


def _reply(msg: Message, metrics: dict, model: torch.nn.Module | None, settings: dict,
           he_ctx, weight: float) -> Message:
    content = RecordDict({protocol.METRICS: MetricRecord(metrics)})
    if model is not None and he_ctx is None:
        content[protocol.ARRAYS] = ArrayRecord(model.cpu().state_dict())
    elif model is not None:
        from fedsim.client.he_step import encrypted_reply

        arrays, he_config = encrypted_reply(
            model.cpu(), weight, he_ctx, client_id=int(metrics[protocol.CLIENT_ID]),
            server_round=int(msg.content[protocol.CONFIG][protocol.ROUND]))
        content[protocol.ARRAYS] = arrays
        content[protocol.HE_CONFIG] = he_config
    return Message(content, reply_to=msg)


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Handshake: tell the server which client this node is."""
    reply = MetricRecord({protocol.CLIENT_ID: client_id(context)})
    return Message(RecordDict({protocol.METRICS: reply}), reply_to=msg)


def _local_training(model, x, y, settings, context, msg, cid):
    server_round = int(msg.content[protocol.CONFIG][protocol.ROUND])
    device = resolve_device(settings["device"])
    from fedsim.client.dp_step import refuse_dp_switched_off

    refuse_dp_switched_off(msg, context, settings, cid)
    if settings.get("dp"):  # secret noise, the site's own ledger: see dp_step
        from fedsim.client.dp_step import dp_train

        outcome, result = dp_train(model, x, y, msg=msg, context=context,
                                   settings=settings, device=device, client_id=cid)
        return result, outcome.metrics
    result = train_epochs(model, x, y, epochs=int(settings["local_epochs"]),
                          batch_size=int(settings["batch_size"]), lr=float(settings["lr"]),
                          device=device, proximal_mu=proximal_mu(settings),
                          generator=seeded_generator(int(settings["seed"]), server_round, cid))
    return result, {}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's local data."""
    torch.set_num_threads(1)
    cid = client_id(context)
    settings = _settings(msg)
    he_ctx = _he_context(msg, settings, context)
    model = _receive_model(msg, settings, he_ctx, "train")
    if he_ctx is not None:
        from fedsim.client.he_step import claim_round

        claim_round(context, int(msg.content[protocol.CONFIG][protocol.ROUND]), he_ctx)
    x, y = client_data(msg, context, cid, "train")
    result, extra = _local_training(model, x, y, settings, context, msg, cid)
    metrics = {protocol.NUM_EXAMPLES: len(y), protocol.CLIENT_ID: cid, **extra}
    if result is None:  # DP budget exhausted: nothing trained, nothing released
        return _reply(msg, metrics, None, settings, he_ctx, len(y))
    if not settings.get("dp"):  # under DP: an unnoised mean over private batches
        metrics[protocol.TRAIN_LOSS] = result.loss
    return _reply(msg, metrics, model, settings, he_ctx, len(y))


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this client's validation split."""
    torch.set_num_threads(1)
    cid = client_id(context)
    settings = _settings(msg)
    from fedsim.client.dp_step import refuse_dp_switched_off

    refuse_dp_switched_off(msg, context, settings, cid)
    if settings.get("dp"):
        from fedsim.client.dp_step import exhausted_for_evaluation

        if exhausted_for_evaluation(msg, context, cid):  # its budget is spent: no more
            reply = MetricRecord({protocol.CLIENT_ID: cid, protocol.DP_EXHAUSTED: 1})
            return Message(RecordDict({protocol.METRICS: reply}), reply_to=msg)
    model = _receive_model(msg, settings, _he_context(msg, settings, context), "evaluate")
    x, y = client_data(msg, context, cid, "val")
    loss, acc = evaluate(model, x, y, device=resolve_device(settings["device"]))
    metrics = MetricRecord({
        protocol.NUM_EXAMPLES: len(y),
        protocol.EVAL_LOSS: loss,
        protocol.EVAL_ACC: acc,
        protocol.CLIENT_ID: cid,
    })
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


