"""Turn a RunConfig into a prepared federation in the run folder (data + partitions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsim.config import RunConfig
from fedsim.errors import ConfigError, DatasetError
from fedsim.fedmodels.datasets import DatasetBundle, load_dataset
from fedsim.fedmodels.models import ModelSpec, build_model, count_parameters
from fedsim.fedmodels.partition import label_counts, partition_indices, split_train_val
from fedsim.fedmodels.store import write_store
from fedsim.privacy.files import atomic_write_json

MIN_ROWS_PER_CLIENT = 2  # one to train on, one to validate on


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """What the run needs after preparation."""

    model: ModelSpec
    data_dir: Path
    num_parameters: int
    train_size: int
    test_size: int


def check_against_dataset(cfg: RunConfig, bundle: DatasetBundle) -> None:
    """Rules that need the dataset's size."""
    n = len(bundle.y_train)
    limit = n // MIN_ROWS_PER_CLIENT
    if cfg.clients > limit:
        raise ConfigError(
            f"--clients {cfg.clients} is more than dataset '{bundle.name}' can serve: "
            f"{n} training samples, at least {MIN_ROWS_PER_CLIENT} per client; "
            f"use --clients {limit} or fewer"
        )


def _partitions(cfg: RunConfig, bundle: DatasetBundle):
    parts = partition_indices(
        bundle.y_train,
        cfg.clients,
        kind=cfg.partition,
        alpha=cfg.alpha,
        shards=cfg.shards_per_client,
        seed=cfg.seed,
    )
    splits = {}
    for cid, rows in enumerate(parts):
        if len(rows) < MIN_ROWS_PER_CLIENT:
            raise DatasetError(
                f"the {cfg.partition} partition gave client {cid} only {len(rows)} "
                f"sample(s); use fewer clients"
                + (" or a larger --alpha" if cfg.partition == "dirichlet" else "")
            )
        splits[cid] = split_train_val(rows, val_fraction=cfg.val_fraction,
                                      seed=cfg.seed, client_id=cid)
    return splits


def prepare(cfg: RunConfig, make_run_dir: Callable[[], Path]) -> tuple[Path, Prepared]:
    """Load and check the data, then make the run folder and store the federation.

    Everything that can reject the configuration happens before the folder exists.
    """
    bundle = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed,
                          max_len=getattr(cfg, "max_len", 64))
    check_against_dataset(cfg, bundle)
    spec = ModelSpec(name=cfg.model, input_shape=bundle.input_shape,
                     num_classes=bundle.num_classes, vocab_size=bundle.vocab_size)
    n_params = count_parameters(build_model(spec))
    splits = _partitions(cfg, bundle)
    run_dir = make_run_dir()
    data_dir = write_store(
        run_dir / "data",
        x_train=bundle.x_train, y_train=bundle.y_train,
        x_test=bundle.x_test, y_test=bundle.y_test, splits=splits,
    )
    atomic_write_json(run_dir / "partitions.json", {
        "partition": cfg.partition,
        "num_classes": bundle.num_classes,
        "clients": {
            str(cid): {
                "train": int(len(s.train)),
                "val": int(len(s.val)),
                "labels": label_counts(bundle.y_train, s.train, bundle.num_classes),
            }
            for cid, s in splits.items()
        },
    })
    return run_dir, Prepared(model=spec, data_dir=data_dir, num_parameters=n_params,
                             train_size=len(bundle.y_train), test_size=len(bundle.y_test))
