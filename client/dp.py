"""DP-SGD local training with Opacus: plain torch, no Flower types.

`train_dp` is the private twin of `training.train_epochs`: Poisson-sampled batches
(Opacus' DPDataLoader), per-example clipping to `max_grad_norm`, Gaussian noise of
std `noise_multiplier * max_grad_norm` on the summed clipped gradient, plain SGD.
It reports the steps really taken and the real sample rate, so an accountant fed
``(noise_multiplier, sample_rate, steps)`` sees exactly what happened.

Per-example gradients: "ghost" clipping is the default because it is the fastest
exact mode on CPU for the registry's models (see benchmarks/bench_dp.py); models it
cannot handle (a layer used twice in one forward pass) fall back to "hooks".

Randomness: every draw the guarantee rests on, the Poisson batches and the noise,
comes from the caller's `DPRandomness` (client/dp_random.py), never from a torch
generator: Opacus' own sampler and noise use torch generators, so `PrivateTraining`
replaces both. A client passes `DPRandomness.secret_source()` (a ChaCha20 key from
its OS entropy, unknown to the server); tests and `--insecure-reproducible-noise`
pass a reproducible one.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsim.client.dp_random import DPRandomness
from fedsim.errors import ConfigError
from fedsim.fedmodels.training import ProximalTerm, host_tensor
from fedsim.privacy.accounting import drop_opacus_log_handler

drop_opacus_log_handler()  # imported above: each Flower log line would print twice

GradSampleMode = Literal["ghost", "hooks"]
"""Exact Opacus modes that survive empty Poisson batches ("functorch" and "ew" crash
on a batch of zero examples, and skipping that noisy step would break the DP
guarantee)."""
GRAD_SAMPLE_MODES: tuple[str, ...] = get_args(GradSampleMode)

log = logging.getLogger(__name__)

_LAYER_LEFTOVERS = ("activations", "max_batch_len")
"""Attributes Opacus' grad-sample hooks set on layers and do not remove."""


@dataclass(frozen=True, kw_only=True)
class DPTrainResult:
    """What one private local training pass reports (all an accountant needs)."""

    loss: float
    num_examples: int
    steps: int
    sample_rate: float
    grad_sample_mode: str = "ghost"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _first_sentence(text: str) -> str:
    return _one_line(text).split(". ")[0].rstrip(".")


def _suggested_fix(layer: nn.Module) -> str:
    """Advise what Opacus' own fixer would turn `layer` into."""
    fixed = ModuleValidator.fix(copy.deepcopy(layer))
    if type(fixed) is not type(layer):
        return (
            f"replace it with {type(fixed).__name__} "
            "(opacus.validators.ModuleValidator.fix(model) does this)"
        )
    if type(layer) in ModuleValidator.FIXERS:
        return "opacus.validators.ModuleValidator.fix(model) reconfigures it"
    return "Opacus has no automatic fix; change this layer of the model"


def _layer_problems(model: nn.Module) -> list[str]:
    problems = []
    for name, layer in trainable_modules(model):
        check = ModuleValidator.VALIDATORS.get(type(layer))
        for err in check(layer) if check is not None else []:
            problems.append(
                f"layer '{name or '<root>'}' ({type(layer).__name__}) is not "
                f"DP-compatible: {_first_sentence(str(err))}; {_suggested_fix(layer)}"
            )
    return problems


def validate_model(model: nn.Module) -> None:
    """Raise one ConfigError naming every layer Opacus cannot train privately.

    Opacus' `ModuleValidator.validate(strict=False)` gives the verdict; each
    problem is re-stated with the layer's name and the replacement Opacus' fixer
    suggests (BatchNorm -> GroupNorm, LSTM -> DPLSTM, ...).
    """
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    problems = [] if model.training else [
        "the model is in eval mode; call model.train() before DP training"
    ]
    problems += _layer_problems(model)
    if len(problems) < len(errors):  # a check Opacus runs that we cannot name
        problems += [_one_line(str(err)) for err in errors[len(problems):]]
    raise ConfigError(problems)


@dataclass(frozen=True, kw_only=True)
class DPSGD:
    """The DP-SGD hyperparameters of one private pass."""

    batch_size: int
    lr: float
    noise_multiplier: float
    max_grad_norm: float
    proximal_mu: float = 0.0  # FedProx: its gradient added after clipping and noise


def _check_args(n: int, *, epochs: int, sgd: DPSGD, grad_sample_mode: str) -> list[str]:
    problems = [] if n > 0 else ["the client has no training examples to train on"]
    problems += [
        f"{flag} must be > 0, got {value}"
        for flag, value in (
            ("--local-epochs", epochs), ("--batch-size", sgd.batch_size), ("--lr", sgd.lr),
            ("--max-grad-norm", sgd.max_grad_norm),
        )
        if not value > 0
    ]
    if not sgd.noise_multiplier >= 0:
        problems.append(f"--noise-multiplier must be >= 0, got {sgd.noise_multiplier}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        problems.append(
            f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
            f"got {grad_sample_mode!r}"
        )
    return problems


class PoissonBatches:
    """Opacus' Poisson sampling (each example in each batch with prob q), secretly drawn.

    `int(1 / q)` batches per epoch, as Opacus' UniformWithReplacementSampler; an
    empty batch is a batch of zero examples (its step still adds noise).
    """

    def __init__(self, dataset: TensorDataset, sample_rate: float,
                 randomness: DPRandomness) -> None:
        self.features, self.labels = dataset.tensors
        self.sample_rate = sample_rate
        self.randomness = randomness

    def __len__(self) -> int:
        return int(1 / self.sample_rate)

    def __iter__(self):
        for _ in range(len(self)):
            mask = self.randomness.poisson_mask(len(self.labels), self.sample_rate)
            rows = mask.nonzero().reshape(-1)
            yield self.features[rows], self.labels[rows]


def _replace_noise(optimizer, randomness: DPRandomness) -> None:
    """Make Opacus' DP optimizer draw its Gaussian noise from `randomness`.

    Same std as Opacus (noise multiplier x clip norm) on the summed clipped
    gradient; the sum is formed in float64 and rounded once (see dp_random).
    """

    def add_noise() -> None:
        std = float(getattr(optimizer, "_adjusted_noise_multiplier",
                            optimizer.noise_multiplier)) * optimizer.max_grad_norm
        params = optimizer.params
        sums = [p.summed_grad for p in params]
        for summed in sums:
            _check_processed_flag(summed)
        noise = (randomness.normal(sum(g.numel() for g in sums), sums[0].device)
                 if std > 0 and sums else None)
        offset = 0
        for p, summed in zip(params, sums, strict=True):
            grad = summed
            if noise is not None:
                part = noise[offset : offset + summed.numel()].view_as(summed)
                grad = (summed.to(torch.float64) + std * part).to(summed.dtype)
                offset += summed.numel()
            p.grad = grad.view_as(p)
            _mark_as_processed(summed)

    optimizer.add_noise = add_noise


def _add_proximal(optimizer, proximal: ProximalTerm) -> None:
    """Add FedProx's proximal gradient to the noisy, scaled gradient of each step."""
    scale_grad = optimizer.scale_grad

    def scale_then_pull() -> None:
        scale_grad()
        proximal.add_gradient()

    optimizer.scale_grad = scale_then_pull


class PrivateTraining:
    """Opacus' private module, optimizer, criterion and Poisson loader for one pass.

    The caller's `model` is trained in place; `close()` (or leaving the `with`
    block) removes every Opacus hook and attribute, so the model keeps its own
    state_dict keys and can be made private again next round.
    """

    def __init__(self, model: nn.Module, dataset: TensorDataset, sgd: DPSGD, *,
                 device: torch.device, randomness: DPRandomness,
                 grad_sample_mode: GradSampleMode = "ghost") -> None:
        self.model = model
        self.device = device
        self.grad_sample_mode = grad_sample_mode
        criterion = nn.CrossEntropyLoss()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self.engine = PrivacyEngine(accountant="rdp")
        parts = self.engine.make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=sgd.lr),
            criterion=criterion,
            data_loader=DataLoader(dataset, batch_size=sgd.batch_size),
            noise_multiplier=sgd.noise_multiplier,
            max_grad_norm=sgd.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=grad_sample_mode,
        )
        if grad_sample_mode == "ghost":
            self.module, self.optimizer, self.criterion, opacus_loader = parts
        else:
            self.module, self.optimizer, opacus_loader = parts
            self.criterion = criterion
        # Opacus' loader and noise draw from torch generators: keep its sample rate
        # (what its accountant hook records), replace both sources of randomness.
        self.loader = PoissonBatches(dataset, float(opacus_loader.sample_rate), randomness)
        _replace_noise(self.optimizer, randomness)
        if sgd.proximal_mu > 0:
            _add_proximal(self.optimizer, ProximalTerm(model, sgd.proximal_mu))

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        """One DP-SGD step on a batch; its mean loss (None for an empty batch).

        An example whose own gradient is not finite under this model (a global
        crafted to overflow on one input) would turn the whole clipped sum into
        NaN, and so tell whoever sees the update that it was there. Such examples
        are found one by one and left out of the step: each counts as a clipped
        contribution of zero, which the DP guarantee already covers. The others'
        contributions and the noise are unchanged.
        """
        xb, yb = xb.to(self.device), yb.to(self.device)
        loss = self._backward(xb, yb)
        if not self._gradients_finite():
            keep = [i for i in range(len(yb)) if self._finite_alone(xb[i:i + 1],
                                                                   yb[i:i + 1])]
            log.warning("left %d example(s) out of a DP step: their gradient under "
                        "this model is not finite", len(yb) - len(keep))
            xb, yb = xb[keep], yb[keep]
            loss = self._backward(xb, yb)
        self.optimizer.step()
        return float(loss.detach()) if len(yb) else None

    def _backward(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.module(xb), yb)
        loss.backward()
        return loss

    def _finite_alone(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        self._backward(x, y)
        return self._gradients_finite()

    def _gradients_finite(self) -> bool:
        """Whether the per-example gradients (hooks) or the clipped sum (ghost) are finite."""
        field = "grad_sample" if self.grad_sample_mode == "hooks" else "grad"
        return all(g is None or bool(torch.isfinite(g).all())
                   for g in (getattr(p, field, None) for p in self.model.parameters()))

    @property
    def steps(self) -> int:
        """Noisy steps taken so far, as Opacus' own accountant recorded them."""
        return sum(int(n) for _, _, n in self.engine.accountant.history)

    @property
    def sample_rate(self) -> float:
        """The Poisson sample rate the loader really uses."""
        return float(self.loader.sample_rate)

    def close(self) -> None:
        """Detach Opacus from the model (hooks, per-sample attributes, gradients).

        Besides Opacus' own cleanup this drops what its hooks leave on layers
        (captured activations), which a pass that failed mid-batch leaves non-empty.
        """
        self.module.cleanup()
        for p in self.model.parameters():
            p.grad = None
            if hasattr(p, "summed_grad"):
                del p.summed_grad
        for layer in self.model.modules():
            for attr in _LAYER_LEFTOVERS:
                if hasattr(layer, attr):
                    delattr(layer, attr)

    def __enter__(self) -> PrivateTraining:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    features = host_tensor(x)
    labels = host_tensor(y).long()
    return TensorDataset(features, labels)


def _run(private: PrivateTraining, epochs: int, n: int) -> DPTrainResult:
    total, count = 0.0, 0
    with warnings.catch_warnings():
        # torch notes on every backward that the input needs no gradient: expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(epochs):
            for xb, yb in private.loader:
                loss = private.step(xb, yb)
                if loss is not None:
                    total += loss * len(yb)
                    count += len(yb)
    return DPTrainResult(
        loss=total / max(count, 1),
        num_examples=n,
        steps=private.steps,
        sample_rate=private.sample_rate,
        grad_sample_mode=private.grad_sample_mode,
    )


def _train(model: nn.Module, dataset: TensorDataset, epochs: int, sgd: DPSGD, *,
           mode: GradSampleMode, device: torch.device,
           randomness: DPRandomness) -> DPTrainResult:
    with PrivateTraining(model, dataset, sgd, device=device, randomness=randomness,
                         grad_sample_mode=mode) as private:
        return _run(private, epochs, len(dataset))


def train_dp(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
    lr: float, noise_multiplier: float, max_grad_norm: float, device: torch.device,
    randomness: DPRandomness, grad_sample_mode: GradSampleMode = "ghost",
    proximal_mu: float = 0.0,
) -> DPTrainResult:
    """DP-SGD over (x, y) for `epochs` Poisson epochs; `model` is trained in place.

    Sampling and noise come from `randomness` (a client passes a secret one).
    `noise_multiplier` 0 clips without noise (no privacy; for tests). Raises a
    ConfigError for bad arguments or a model Opacus cannot train privately.
    """
    sgd = DPSGD(batch_size=batch_size, lr=lr, noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm, proximal_mu=proximal_mu)
    problems = _check_args(len(y), epochs=epochs, sgd=sgd, grad_sample_mode=grad_sample_mode)
    if problems:
        raise ConfigError(problems)
    model.to(device).train()
    validate_model(model)
    dataset = _dataset(x, y)
    if grad_sample_mode != "ghost":
        return _train(model, dataset, epochs, sgd, mode=grad_sample_mode, device=device,
                      randomness=randomness)
    weights = copy.deepcopy(model.state_dict())
    try:
        return _train(model, dataset, epochs, sgd, mode="ghost", device=device,
                      randomness=randomness)
    except NotImplementedError as err:  # e.g. a layer used twice per forward pass
        # Nothing of the failed pass left this function: redo it from the start,
        # with the same stream when reproducible and fresh secret noise otherwise.
        log.info("ghost clipping cannot train this model (%s); using hooks", err)
        model.load_state_dict(weights)
        return _train(model, dataset, epochs, sgd, mode="hooks", device=device,
                      randomness=randomness.restarted())
