"""Local training and evaluation: plain torch, no Flower types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What one local training pass reports."""

    loss: float
    num_examples: int
    steps: int


def resolve_device(requested: str) -> torch.device:
    """'auto' picks cuda when a GPU is visible, else cpu."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor over `array`; a read-only (memory-mapped) array is copied first."""
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))


def seeded_generator(*seed_parts: int) -> torch.Generator:
    """A torch generator seeded from several integers (run seed, round, client)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


class ProximalTerm:
    """FedProx's mu/2 * ||w - w_global||^2 (Li et al. 2020), as a gradient to add.

    `w_global` is the model's state when this is made (the received global).
    `add_gradient` adds mu * (w - w_global) to every parameter's gradient: the
    term's own gradient, so the data loss (and the loss reported) is unchanged. In
    DP-SGD it is added after clipping and noise: it depends on the current weights
    and the global only, never on an example, so the privacy guarantee is unchanged.
    """

    def __init__(self, model: nn.Module, mu: float) -> None:
        self.mu = mu
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.anchor = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def add_gradient(self) -> None:
        """p.grad += mu * (p - p_global) for every trainable parameter."""
        for p, anchor in zip(self.params, self.anchor, strict=True):
            pull = self.mu * (p.detach() - anchor)
            p.grad = pull if p.grad is None else p.grad + pull


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_epochs(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Minibatch SGD over (x, y) for `epochs` passes; returns the mean loss.

    `proximal_mu` > 0 adds FedProx's proximal term around the starting weights.
    """
    model.to(device).train()
    proximal = ProximalTerm(model, proximal_mu) if proximal_mu > 0 else None
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    features = host_tensor(x).to(device)
    labels = host_tensor(y).to(device)
    loss_fn = nn.CrossEntropyLoss()
    total, count, steps = 0.0, 0, 0
    for _ in range(epochs):
        for idx in _batches(len(labels), batch_size, generator):
            idx = idx.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(features[idx]), labels[idx])
            loss.backward()
            if proximal is not None:
                proximal.add_gradient()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            steps += 1
    return TrainResult(loss=total / max(count, 1), num_examples=len(labels), steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 512,
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of `model` on (x, y)."""
    model.to(device).eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = host_tensor(x[start : start + batch_size]).to(device)
        yb = host_tensor(y[start : start + batch_size]).to(device)
        logits = model(xb)
        total_loss += float(loss_fn(logits, yb))
        correct += int((logits.argmax(dim=1) == yb).sum())
    n = max(len(y), 1)
    return total_loss / n, correct / n
