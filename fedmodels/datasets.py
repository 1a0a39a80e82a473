"""Dataset registry: each loader returns a `DatasetBundle` of numpy arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsim.errors import DatasetError


@dataclass(frozen=True, kw_only=True)
class DatasetBundle:
    """A dataset's canonical train/test split as in-memory arrays."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    kind: str = "image"  # "image" or "text"


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """A registry entry: how to load a dataset and what to say about it."""

    name: str
    description: str
    source: str
    loader: Callable[[str | None, int], DatasetBundle]
    embedded: bool


_REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> None:
    """Add a dataset to the registry."""
    _REGISTRY[info.name] = info


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`, or a DatasetError naming the valid ones."""
    if name not in _REGISTRY:
        raise DatasetError(
            f"unknown dataset '{name}'; choose one of: {', '.join(dataset_names())}"
        )
    return _REGISTRY[name]


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0) -> DatasetBundle:
    """Load a registered dataset (from `data_dir` when given)."""
    return dataset_info(name).loader(data_dir, seed)


def split_train_test(
    x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train/test split for datasets that ship without one."""
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


def _load_digits(data_dir: str | None, seed: int) -> DatasetBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; scale to [0, 1] and add the channel axis.
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    # The split is fixed (seed 0) so every run shares one held-out test set.
    x_tr, y_tr, x_te, y_te = split_train_test(x, y, test_fraction=0.2, seed=0)
    return DatasetBundle(
        name="digits",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        num_classes=10,
        input_shape=(1, 8, 8),
    )


register(
    DatasetInfo(
        name="digits",
        description="scikit-learn handwritten digits, 8x8 grey, 10 classes "
        "(1,797 images; fixed stratified 80/20 train/test split)",
        source="embedded (scikit-learn)",
        loader=_load_digits,
        embedded=True,
    )
)
