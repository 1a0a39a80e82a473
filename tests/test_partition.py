import numpy as np
import pytest

from fedsim.fedmodels.datasets import load_dataset
from fedsim.fedmodels.partition import partition_indices, split_train_val


@pytest.fixture(scope="module")
def labels():
    return load_dataset("digits").y_train


def _check_disjoint_cover(parts, n, *, exact=True):
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "a row was given to two clients"
    if exact:
        assert len(joined) == n


def test_iid_sizes_and_balance(labels):
    parts = partition_indices(labels, 10, kind="iid", seed=1)
    _check_disjoint_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # every IID client sees most classes
    assert all(len(np.unique(labels[p])) >= 8 for p in parts)


def test_dirichlet_is_skewed_and_seeded(labels):
    a = partition_indices(labels, 10, kind="dirichlet", alpha=0.1, seed=3)
    b = partition_indices(labels, 10, kind="dirichlet", alpha=0.1, seed=3)
    c = partition_indices(labels, 10, kind="dirichlet", alpha=0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    _check_disjoint_cover(a, len(labels))
    iid = partition_indices(labels, 10, kind="iid", seed=3)

    def dominant_share(parts):
        return np.mean([np.bincount(labels[p]).max() / len(p) for p in parts])

    assert dominant_share(a) > 2 * dominant_share(iid)


def test_shards_give_two_labels_per_client(labels):
    parts = partition_indices(labels, 20, kind="shards", shards=2, seed=0)
    _check_disjoint_cover(parts, len(labels), exact=False)
    classes = [len(np.unique(labels[p])) for p in parts]
    assert np.median(classes) <= 3
    assert max(classes) <= 4


def test_train_val_split_is_disjoint_and_nonempty():
    rows = np.arange(100, 113)
    split = split_train_val(rows, val_fraction=0.1, seed=5, client_id=7)
    assert len(split.val) >= 1 and len(split.train) >= 1
    assert set(split.train).isdisjoint(split.val)
    assert sorted([*split.train, *split.val]) == rows.tolist()
