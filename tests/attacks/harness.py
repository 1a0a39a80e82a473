"""Run fedsim's real ClientApp in this process, as one simulated client.

The attacks need exactly what a client computes (its DP step, its randomness, its
ledger) and exactly what the server sees (the reply); going through the ClientApp
object, its mods and its message handlers, nothing is re-implemented here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from torch.nn import functional as F

from fedsim import protocol
from fedsim.client.app import app as client_app
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.partition import ClientSplit
from fedsim.fedmodels.store import write_store
from fedsim.settings import ClientSettings, DPSettings

SPEC = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10)


def dp_settings(**dp) -> DPSettings:
    base = dict(noise_multiplier=1.0, target_epsilon=None, max_grad_norm=1.0, delta=1e-5,
                accountant="rdp", epsilon_budget=None, insecure_reproducible_noise=False)
    return DPSettings(**(base | dp))


def settings(*, rounds=3, batch_size=16, lr=1.0, seed=42, **dp) -> dict:
    """An honest server's settings as the JSON object it sends (an attack edits it)."""
    honest = ClientSettings(model=SPEC, dataset="digits", local_epochs=1,
                            batch_size=batch_size, lr=lr, device="cpu", seed=seed,
                            val_fraction=0.1, rounds=rounds, fraction=1.0,
                            dp=dp_settings(**dp))
    return json.loads(honest.encode())


def store(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """One client's training rows (x, y) as a simulation store."""
    n = len(y)
    return write_store(folder, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2],
                       splits={0: ClientSplit(train=np.arange(n), val=np.arange(2))})


@dataclass
class SimulatedClient:
    """Client 0 of a simulation, its data in `data_dir`, its Context kept across rounds."""

    data_dir: Path
    privacy_dir: Path | None = None
    context: Context = field(default_factory=lambda: Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
        run_config={}))

    def train(self, global_state: dict, run_settings: dict, server_round: int, *,
              history: str | None = None) -> Message:
        config = ConfigRecord({protocol.SETTINGS: json.dumps(run_settings),
                               protocol.ROUND: server_round,
                               protocol.DATA_DIR: str(self.data_dir)})
        if self.privacy_dir is not None:
            config[protocol.SIM_PRIVACY_DIR] = str(self.privacy_dir)
        if history is not None:
            config[protocol.DP_HISTORY] = history
        msg = Message(RecordDict({protocol.ARRAYS: ArrayRecord(global_state),
                                  protocol.CONFIG: config}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
        return client_app(msg, self.context)


def initial_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model(SPEC).state_dict().items()}


def flat(state: dict) -> torch.Tensor:
    return torch.cat([torch.as_tensor(v).flatten().double() for v in state.values()])


def reply_state(reply: Message) -> dict:
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply.content[protocol.ARRAYS].to_torch_state_dict()


def clipped_gradient(global_state: dict, x: np.ndarray, label: int,
                     clip: float) -> torch.Tensor:
    """One example's gradient at the global model, clipped to norm `clip` (flat)."""
    model = build_model(SPEC)
    model.load_state_dict(global_state)
    model.train()
    loss = F.cross_entropy(model(torch.as_tensor(x[None])), torch.tensor([label]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    flat_grad = torch.cat([g.flatten().double() for g in grads])
    return flat_grad * min(1.0, clip / (float(flat_grad.norm()) + 1e-6))


def neighbour_replies(folder: Path, x: np.ndarray, y: np.ndarray, state: dict,
                      run: dict) -> list[Message]:
    """One round's replies of two clients whose data differ in row 0 only.

    "with" holds (x, y); "without" has row 0 replaced by row 1 (same size).
    """
    swapped_x, swapped_y = x.copy(), y.copy()
    swapped_x[0], swapped_y[0] = x[1], y[1]
    replies = []
    for name, (xs, ys) in {"with": (x, y), "without": (swapped_x, swapped_y)}.items():
        site = SimulatedClient(store(folder / name, xs, ys),
                               privacy_dir=folder / f"{name}-ledger")
        replies.append(site.train(state, run, 1))
    return replies
