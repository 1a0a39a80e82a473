"""A client's reply as steps chosen once from the run settings.

    receive the global  ->  train  ->  protect the update  ->  reply
    (Protector.receive)    (Trainer)   (Protector.seal)

- a `Trainer` trains on the site's rows: `PlainTrainer` (seeded SGD) or `DPTrainer`
  (DP-SGD with secret noise, after a budget check on the site's own ledger:
  `client/dp_step.py`);
- a `Protector` is the payload format, the client's half of the server's `Codec`
  (`server/codecs.py`): `PlainProtector` loads and sends plaintext arrays;
  `HEProtector` uses the site's own keys to verify and decrypt the global, claims
  the round, and encrypts the update (`client/he_step.py`).

`steps_for` picks one of each from the settings; the ClientApp (`client/app.py`)
runs them in that order and never asks again whether DP or HE is on. A new privacy
mode is one class here and one line in `steps_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from fedsim import protocol
from fedsim.client.site_journal import refuse_he_switched_off
from fedsim.fedmodels.training import resolve_device, seeded_generator, train_epochs
from fedsim.settings import ClientSettings

Record = ArrayRecord | ConfigRecord


@dataclass(frozen=True, kw_only=True)
class Job:
    """One train or evaluate message as this client reads it: settings decoded once."""

    msg: Message
    context: Context
    settings: ClientSettings
    client_id: int

    @property
    def server_round(self) -> int:
        """The round the server says this message is for."""
        return int(self.msg.content[protocol.CONFIG][protocol.ROUND])

    @property
    def device(self) -> torch.device:
        """Where to train and evaluate (the run's device, if this site has it)."""
        return resolve_device(self.settings.device)


@dataclass(frozen=True, kw_only=True)
class Trained:
    """What local training produced: reply metrics, and whether an update leaves."""

    metrics: dict
    update: bool  # False: nothing was trained (a spent DP budget), nothing is sent


class Trainer(Protocol):
    """How a client trains, and what it must check before it evaluates."""

    def train(self, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> Trained:
        """Train `model` in place on (x, y); raise to refuse the message."""

    def before_evaluation(self) -> dict | None:
        """Metrics to reply instead of evaluating, or None to evaluate; raise to refuse."""


class Protector(Protocol):
    """How the global arrives and the update leaves (the client's half of a Codec)."""

    def receive(self, model: torch.nn.Module, *, stage: str) -> None:
        """Load the message's global state into `model` ('train' or 'evaluate')."""

    def seal(self, model: torch.nn.Module, *, weight: float) -> dict[str, Record]:
        """The reply's payload records for the trained `model` (its data weighs `weight`)."""


# ---------------------------------------------------------------- trainers


class PlainTrainer:
    """Seeded minibatch SGD; a site that took part in this run with DP refuses it."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def _refuse_dp_switched_off(self) -> None:
        from fedsim.client.dp_step import refuse_dp_switched_off

        job = self.job
        refuse_dp_switched_off(job.msg, job.context, job.settings, job.client_id)

    def train(self, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> Trained:
        """Local epochs of SGD, batches drawn from (seed, round, client)."""
        self._refuse_dp_switched_off()
        job, s = self.job, self.job.settings
        result = train_epochs(
            model, x, y, epochs=s.local_epochs, batch_size=s.batch_size, lr=s.lr,
            device=job.device, proximal_mu=s.proximal_mu,
            generator=seeded_generator(s.seed, job.server_round, job.client_id))
        return Trained(metrics={protocol.TRAIN_LOSS: result.loss}, update=True)

    def before_evaluation(self) -> dict | None:
        """Evaluate, unless this run was a DP run at this site."""
        self._refuse_dp_switched_off()
        return None


class DPTrainer:
    """DP-SGD with secret noise, within the budget the site's own ledger allows."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def train(self, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> Trained:
        """Check the budget, train, record the release (see `dp_step.dp_train`).

        No training loss is reported: it would be an unnoised mean over private
        batches.
        """
        from fedsim.client.dp_step import dp_train

        job = self.job
        outcome, result = dp_train(model, x, y, msg=job.msg, context=job.context,
                                   settings=job.settings, device=job.device,
                                   client_id=job.client_id)
        return Trained(metrics=outcome.metrics, update=result is not None)

    def before_evaluation(self) -> dict | None:
        """Once this site's budget for the run is spent it sends no more metrics."""
        from fedsim.client.dp_step import exhausted_for_evaluation

        job = self.job
        if exhausted_for_evaluation(job.msg, job.context, job.settings, job.client_id):
            return {protocol.DP_EXHAUSTED: 1}
        return None


# ---------------------------------------------------------------- protectors


class PlainProtector:
    """Plaintext arrays both ways: the server sees the update."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def receive(self, model: torch.nn.Module, *, stage: str) -> None:
        """Load the global as sent, unless this site took part in the run under HE."""
        job = self.job
        data_dir = job.msg.content[protocol.CONFIG].get(protocol.DATA_DIR)
        refuse_he_switched_off(job.context.node_config, None if data_dir is None else str(data_dir),
                               int(job.msg.metadata.run_id))
        model.load_state_dict(job.msg.content[protocol.ARRAYS].to_torch_state_dict())

    def seal(self, model: torch.nn.Module, *, weight: float) -> dict[str, Record]:
        """The trained state as an ArrayRecord."""
        return {protocol.ARRAYS: ArrayRecord(model.cpu().state_dict())}


class HEProtector:
    """CKKS under the site's own keys: a verified global in, a sealed update out."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.session = None  # the site's HE session, opened with the global

    def receive(self, model: torch.nn.Module, *, stage: str) -> None:
        """Check the run against the site's keys, verify and decrypt the global.

        A training message also claims its round (once per round, in increasing
        rounds) before anything is trained.
        """
        from fedsim.client.he_step import claim_round, global_state, session_for

        job = self.job
        data_dir = job.msg.content[protocol.CONFIG].get(protocol.DATA_DIR)
        self.session = session_for(job.settings.he, job.context,
                                   None if data_dir is None else str(data_dir),
                                   flower_run=int(job.msg.metadata.run_id))
        model.load_state_dict(global_state(
            job.msg.content[protocol.ARRAYS], model, self.session, spec=job.settings.model,
            seed=job.settings.seed, server_round=job.server_round, stage=stage))
        if stage == "train":
            claim_round(job.context, job.server_round, self.session)

    def seal(self, model: torch.nn.Module, *, weight: float) -> dict[str, Record]:
        """The clipped, weighted, tagged update as ciphertexts, and what it is bound to."""
        from fedsim.client.he_step import encrypted_reply

        job = self.job
        arrays, he_config = encrypted_reply(model.cpu(), weight, self.session,
                                            client_id=job.client_id,
                                            server_round=job.server_round)
        return {protocol.ARRAYS: arrays, protocol.HE_CONFIG: he_config}


# ---------------------------------------------------------------- choosing the steps


@dataclass(frozen=True, kw_only=True)
class Steps:
    """One message's trainer and protector."""

    job: Job
    trainer: Trainer
    protector: Protector


def steps_for(job: Job) -> Steps:
    """The steps the run's settings ask for: DP or plain training, HE or plaintext."""
    settings = job.settings
    trainer = DPTrainer(job) if settings.dp is not None else PlainTrainer(job)
    protector = HEProtector(job) if settings.he is not None else PlainProtector(job)
    return Steps(job=job, trainer=trainer, protector=protector)
