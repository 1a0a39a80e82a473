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
) -> TrainResult:
    """Minibatch SGD over (x, y) for `epochs` passes; returns the mean loss."""
    model.to(device).train()
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
