"""Fixtures the in-process client attacks share (tests/attacks/harness.py)."""

import numpy as np
import pytest
import torch

DIGITS = 16  # the attacks' client holds 16 digits: batch 16 is q = 1, one step


@pytest.fixture
def task_identity():
    """Flower's Message needs the identity of a running task; one torch thread."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    torch.set_num_threads(1)
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


@pytest.fixture(scope="module")
def digits():
    """The first DIGITS scikit-learn digits, as a client's (x, y)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[:DIGITS, None] / 16.0).astype(np.float32)
    return x, data.target[:DIGITS].astype(np.int64)


@pytest.fixture
def noise_draws(monkeypatch):
    """The sizes of every Gaussian noise draw DP training makes (one per step)."""
    from fedsim.client import dp_random

    draws: list[int] = []
    real_normal = dp_random.DPRandomness.normal

    def counting_normal(self, count, device=None):
        draws.append(count)
        return real_normal(self, count, device)

    monkeypatch.setattr(dp_random.DPRandomness, "normal", counting_normal)
    return draws
