"""A prepared federation on disk: the arrays once, and each client's row indices.

The driver writes it once per run; clients and the server memory-map the arrays, so
hundreds of simulated clients on Ray workers share one copy in the page cache
instead of each holding its own.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import DatasetError
from fedsim.fedmodels.partition import ClientSplit

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_CLIENTS = "clients.npz"


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def write_store(
    folder: str | Path,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    splits: dict[int, ClientSplit],
) -> Path:
    """Write the arrays and the per-client splits under `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(_ARRAYS, (x_train, y_train, x_test, y_test), strict=True):
        _save_npy_atomic(folder / f"{name}.npy", np.ascontiguousarray(array))
    packed: dict[str, np.ndarray] = {}
    for cid, split in splits.items():
        packed[f"train_{cid}"] = split.train
        packed[f"val_{cid}"] = split.val
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **packed)
    os.replace(tmp, folder / _CLIENTS)
    return folder


@dataclass(frozen=True)
class Store:
    """Read access to a written store (arrays memory-mapped, read-only)."""

    folder: Path

    def array(self, name: str) -> np.ndarray:
        """One of x_train, y_train, x_test, y_test."""
        return _mmap(str(self.folder / f"{name}.npy"))

    def client_split(self, client_id: int) -> ClientSplit:
        """The train/validation row indices of one client."""
        packed = _clients(str(self.folder / _CLIENTS))
        key = f"train_{client_id}"
        if key not in packed.files:
            raise DatasetError(
                f"client {client_id} has no partition in {self.folder}; "
                f"the federation has {len(packed.files) // 2} clients"
            )
        return ClientSplit(train=packed[key], val=packed[f"val_{client_id}"])

    def client_data(self, client_id: int, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of a client's 'train' or 'val' rows, copied out of the map."""
        split = self.client_split(client_id)
        rows = split.train if part == "train" else split.val
        return self.array("x_train")[rows], self.array("y_train")[rows]

    def test_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The central held-out test split."""
        return self.array("x_test"), self.array("y_test")


@functools.lru_cache(maxsize=16)
def _mmap(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except OSError as err:
        raise DatasetError(f"cannot read prepared data '{path}': {err}") from err


@functools.lru_cache(maxsize=4)
def _clients(path: str):
    try:
        return np.load(path)
    except OSError as err:
        raise DatasetError(f"cannot read client partitions '{path}': {err}") from err


def open_store(folder: str | Path) -> Store:
    """Open a store written by `write_store`."""
    folder = Path(folder)
    if not (folder / _CLIENTS).is_file():
        raise DatasetError(f"no prepared federation data in '{folder}'")
    return Store(folder)
