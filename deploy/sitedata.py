"""`fedsim deploy site-data`: a site's data folder, in the layout its SuperNode reads.

Two ways in:
- a user's own files (`--from`): a data.npz, a data.csv/train.csv, or a folder of
  IDX files or class subfolders; read exactly as the site will read them (same
  reader, same checks) and copied into the site's folder;
- one partition of a built-in image dataset (`--dataset digits --partition 0
  --partitions 2`): a seeded, disjoint share of its training split as data.npz,
  for trying a deployment out.

The folder is made world-readable (0755 folders, 0644 files) so that the
containers' user (uid 10001) can read it through the read-only mount; it sits
on the site's own machine, with the site's other secrets.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import DatasetError

FOLDER_MODE, FILE_MODE = 0o755, 0o644


@dataclass(frozen=True, kw_only=True)
class SiteFolder:
    """What was written: where, how many examples, their shape and labels."""

    folder: Path
    examples: int
    shape: tuple[int, ...]
    labels: tuple[int, ...]


def _fresh(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"'{out}' is a file; give a folder to --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DatasetError(f"'{out}' already holds files; pass --force to replace "
                               "them or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _readable(out: Path) -> None:
    out.chmod(FOLDER_MODE)
    for path in out.rglob("*"):
        path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)


def read_as_site(folder: Path, dataset: str, *, input_shape: tuple[int, ...] | None,
                 num_classes: int | None) -> SiteFolder:
    """Read `folder` with the site's own reader and checks; what it holds."""
    from fedsim.client.local_data import SiteSpec, check_examples, read_images, read_text
    from fedsim.fedmodels.datasets import dataset_info
    from fedsim.fedmodels.text import DEFAULT_MAX_LEN, MAX_VOCAB

    info = dataset_info(dataset)
    shape = input_shape or info.input_shape or ((DEFAULT_MAX_LEN,) if info.kind == "text"
                                                else None)
    classes = num_classes or info.num_classes
    if shape is None or classes is None:
        raise DatasetError(f"dataset '{dataset}' has no fixed shape or classes; give "
                           "--input-shape C,H,W and --num-classes N")
    spec = SiteSpec(folder=str(folder), dataset=dataset, client_id=0, seed=0,
                    val_fraction=0.1, input_shape=tuple(shape), num_classes=classes,
                    vocab_size=MAX_VOCAB if info.kind == "text" else None)
    if info.kind == "text":
        x, y = read_text(folder, spec)
    else:
        x, y = read_images(folder, info, spec)
    check_examples(x, y, spec, folder)
    return SiteFolder(folder=folder, examples=len(y), shape=tuple(x.shape[1:]),
                      labels=tuple(sorted({int(v) for v in y})))


def import_files(*, source: Path, dataset: str, out: Path, force: bool = False,
                 input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> SiteFolder:
    """Check a user's files as the site will read them, then copy them to `out`."""
    if not source.exists():
        raise DatasetError(f"'{source}' does not exist; give a data.npz, a data.csv or "
                           "a folder in a site layout to --from")
    if source.resolve() == out.resolve():
        raise DatasetError("--from and --out are the same folder")
    staging = out.with_name(out.name + ".checking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if source.is_dir():
            shutil.copytree(source, staging, dirs_exist_ok=True)
        else:
            name = "data.npz" if source.suffix == ".npz" else "data.csv"
            shutil.copy2(source, staging / name)
        found = read_as_site(staging, dataset, input_shape=input_shape,
                             num_classes=num_classes)
        _fresh(out, force)
        out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _readable(out)
    return SiteFolder(folder=out, examples=found.examples, shape=found.shape,
                      labels=found.labels)


def partition_rows(n: int, *, partition: int, partitions: int, seed: int) -> np.ndarray:
    """Row indices of one of `partitions` disjoint, seeded, near-equal shares of n."""
    if partitions < 1 or not 0 <= partition < partitions:
        raise DatasetError(f"--partition must be in 0..{partitions - 1} and "
                           f"--partitions >= 1; got {partition} of {partitions}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(np.array_split(order, partitions)[partition])


def write_partition(*, dataset: str, partition: int, partitions: int, out: Path,
                    seed: int = 0, force: bool = False) -> SiteFolder:
    """One share of a built-in image dataset's training split, as data.npz."""
    from fedsim.fedmodels.datasets import dataset_info, load_dataset

    info = dataset_info(dataset)
    if info.kind != "image" or not info.embedded:
        raise DatasetError(f"--dataset '{dataset}' is not an embedded image dataset; "
                           "give the site's own files with --from")
    bundle = load_dataset(dataset, seed=seed)
    rows = partition_rows(len(bundle.y_train), partition=partition,
                          partitions=partitions, seed=seed)
    _fresh(out, force)
    np.savez(out / "data.npz", x=bundle.x_train[rows], y=bundle.y_train[rows])
    _readable(out)
    return read_as_site(out, dataset, input_shape=None, num_classes=None)
