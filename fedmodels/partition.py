"""Split a training set across clients with flwr-datasets partitioners.

Partitioners run over an in-memory `datasets.Dataset` holding only labels and row
indices, so the arrays themselves are never copied; the result is one index array
per client, further split into a local train and validation part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.errors import DatasetError


@dataclass(frozen=True, kw_only=True)
class ClientSplit:
    """Row indices (into the training arrays) one client trains and validates on."""

    train: np.ndarray
    val: np.ndarray


def _make_partitioner(kind: str, num_clients: int, *, alpha: float, shards: int, seed: int):
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        ShardPartitioner,
    )

    if kind == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    if kind == "shards":
        # The FedAvg paper's pathological split: sort by label, cut into
        # `shards * num_clients` equal shards, give each client `shards` of them.
        return ShardPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_shards_per_partition=shards,
            shuffle=True,
            seed=seed,
        )
    raise DatasetError(f"unknown partition '{kind}'; choose iid, dirichlet or shards")


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    *,
    kind: str = "iid",
    alpha: float = 0.5,
    shards: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """One array of row indices per client, seeded and reproducible."""
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"label": labels[order].tolist(), "idx": order.tolist()})
    partitioner = _make_partitioner(kind, num_clients, alpha=alpha, shards=shards, seed=seed)
    partitioner.dataset = table
    try:
        parts = [
            np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)
            for i in range(num_clients)
        ]
    except ValueError as err:
        raise DatasetError(
            f"cannot make a '{kind}' partition of {len(labels)} samples over "
            f"{num_clients} clients ({err}); use fewer clients or a larger alpha"
        ) from err
    return parts


def split_train_val(
    indices: np.ndarray, *, val_fraction: float, seed: int, client_id: int
) -> ClientSplit:
    """Seeded local train/validation split of one client's rows (at least 1 each)."""
    rng = np.random.default_rng([seed, client_id])
    shuffled = rng.permutation(indices)
    n_val = int(round(len(shuffled) * val_fraction))
    n_val = min(max(n_val, 1), len(shuffled) - 1)
    return ClientSplit(train=np.sort(shuffled[n_val:]), val=np.sort(shuffled[:n_val]))


def label_counts(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> list[int]:
    """How many rows of each class `indices` selects."""
    return np.bincount(labels[indices], minlength=num_classes).astype(int).tolist()
