"""Where a client's examples come from.

In a simulation the driver prepared one store for every client and says where in the
message (`data-dir`). In a deployment the server never sees data: each site mounts
its own folder (node config `data-dir`), read here in the format of the run's
dataset and split into local train/validation rows with a seeded split:

- images: `data.npz` (arrays `x`, N x C x H x W or N x H x W, uint8 0-255 or float
  0-1, and `y`), or MNIST IDX files (`train-images-idx3-ubyte[.gz]`,
  `train-labels-idx1-ubyte[.gz]`), or one subfolder per class of .png/.jpg
  (`<class>/*.png`, also under `train/`); class folders are named by the dataset's
  class names or by label numbers;
- text: `data.csv` (or `train.csv`) with columns `text,label`; words become hashed
  token ids (the same word has the same id at every site, and no vocabulary has to
  be shared, which would leak the sites' words).

A missing or malformed folder raises a one-line DatasetError naming the path and
the layout expected; the ClientApp's site guard sends it to the server as the
reason. Reads are cached per process.
"""

from __future__ import annotations

import csv
import functools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message

from fedsim import protocol
from fedsim.errors import DatasetError, SettingsError
from fedsim.fedmodels.datasets import DatasetInfo, dataset_info
from fedsim.fedmodels.loaders import (
    class_image_files,
    find_idx_file,
    read_idx_pair,
    read_image_files,
)
from fedsim.fedmodels.partition import split_train_val
from fedsim.fedmodels.store import open_store
from fedsim.settings import ClientSettings

LAYOUTS = {
    "image": "data.npz (arrays x and y), or train-images-idx3-ubyte[.gz] with "
             "train-labels-idx1-ubyte[.gz], or <class>/*.png|jpg subfolders",
    "text": "data.csv (or train.csv) with columns text,label",
}
IDX_PAIR = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEXT_FILES = ("data.csv", "train.csv")
RESERVED_IDS = 2  # 0 padding, 1 unknown (fedsim.fedmodels.text)


@dataclass(frozen=True, kw_only=True)
class SiteSpec:
    """What a site needs to read and split its folder for one run."""

    folder: str
    dataset: str
    client_id: int
    seed: int
    val_fraction: float
    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class SiteData:
    """A site's examples split into local train and validation rows."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


# ---------------------------------------------------------------- choosing a source


def client_data(msg: Message, context: Context, client_id: int,
                part: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of this client's 'train' or 'val' rows, from the store or the site."""
    config = msg.content[protocol.CONFIG]
    if protocol.DATA_DIR in config:  # simulation: the driver's prepared store
        folder = context.node_config.get("data-dir", config[protocol.DATA_DIR])
        return open_store(str(folder)).client_data(client_id, part)
    data = site_data(site_spec(msg, context, client_id))
    return (data.x_train, data.y_train) if part == "train" else (data.x_val, data.y_val)


def train_size(msg: Message, context: Context) -> int:
    """How many training examples this client holds (the DP policy check needs it)."""
    client_id = int(context.node_config["partition-id"])
    return len(client_data(msg, context, client_id, "train")[1])


def message_settings(msg: Message) -> ClientSettings:
    """The run settings the server sent with a train/evaluate message, checked."""
    config = msg.content[protocol.CONFIG]
    if protocol.SETTINGS not in config:
        raise SettingsError(["the message carries no run settings"])
    return ClientSettings.decode(config[protocol.SETTINGS])


def site_spec(msg: Message, context: Context, client_id: int) -> SiteSpec:
    """The site's folder (node config) and the run's dataset, seed and model shape.

    The run's own settings, not Flower's run config: a resumed run's run config
    holds the app's defaults, not the run's.
    """
    if "data-dir" not in context.node_config:
        raise DatasetError(f"client {client_id} has no data folder: start its "
                           "SuperNode with --node-config 'data-dir=\"/path\"'")
    settings = message_settings(msg)
    model = settings.model
    return SiteSpec(folder=str(context.node_config["data-dir"]),
                    dataset=settings.dataset, client_id=client_id,
                    seed=settings.seed, val_fraction=settings.val_fraction,
                    input_shape=model.input_shape, num_classes=model.num_classes,
                    vocab_size=model.vocab_size)


@functools.lru_cache(maxsize=4)
def site_data(spec: SiteSpec) -> SiteData:
    """Read the site's folder and split it (seeded by run seed and client id)."""
    info = dataset_info(spec.dataset)
    folder = Path(spec.folder)
    if not folder.is_dir():
        raise DatasetError(f"site data folder '{folder}' does not exist; put "
                           f"{LAYOUTS[info.kind]} in it (dataset '{spec.dataset}')")
    if info.kind == "text":
        x, y = read_text(folder, spec)
    else:
        x, y = read_images(folder, info, spec)
    check_examples(x, y, spec, folder)
    split = split_train_val(np.arange(len(y)), val_fraction=spec.val_fraction,
                            seed=spec.seed, client_id=spec.client_id)
    return SiteData(x_train=x[split.train], y_train=y[split.train],
                    x_val=x[split.val], y_val=y[split.val])


def check_examples(x: np.ndarray, y: np.ndarray, spec: SiteSpec, folder: Path) -> None:
    """Enough examples, the model's input shape, labels within the classes."""
    if len(y) < 2 or len(x) != len(y):
        raise DatasetError(f"site data in '{folder}' has {len(x)} examples and "
                           f"{len(y)} labels; it needs at least 2 of each, as many "
                           "labels as examples")
    if tuple(x.shape[1:]) != spec.input_shape:
        raise DatasetError(
            f"site data in '{folder}' has examples of shape {tuple(x.shape[1:])}, but "
            f"the run's model expects {spec.input_shape} (dataset '{spec.dataset}')")
    if y.min() < 0 or y.max() >= spec.num_classes:
        last = spec.num_classes - 1
        raise DatasetError(f"site data in '{folder}' has labels {int(y.min())}.."
                           f"{int(y.max())}; the run has classes 0..{last}")


# ---------------------------------------------------------------- images


def read_images(folder: Path, info: DatasetInfo, spec: SiteSpec
                ) -> tuple[np.ndarray, np.ndarray]:
    """The first image layout found: data.npz, IDX files, or class subfolders."""
    if (folder / "data.npz").is_file():
        return _read_npz(folder / "data.npz")
    if find_idx_file(folder, IDX_PAIR[0]) and find_idx_file(folder, IDX_PAIR[1]):
        return _read_idx(folder)
    classes = folder / "train" if (folder / "train").is_dir() else folder
    if any(d.is_dir() for d in classes.iterdir()):
        return _read_class_folders(classes, info, spec)
    raise DatasetError(f"site data folder '{folder}' holds none of: "
                       f"{LAYOUTS['image']} (dataset '{spec.dataset}')")


def _scaled(x: np.ndarray) -> np.ndarray:
    pixels = x.astype(np.float32)
    if x.dtype == np.uint8:
        pixels /= 255.0
    return pixels[:, None] if pixels.ndim == 3 else pixels


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = np.asarray(data["x"]), np.asarray(data["y"])
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(f"cannot read '{path}' ({err}); it must be an .npz with "
                           "arrays x (N,C,H,W or N,H,W) and y (N labels)") from err
    if x.ndim not in (3, 4) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"'{path}' has x of shape {x.shape} and y of type "
                           f"{y.dtype}; expected images (N,C,H,W or N,H,W) and "
                           "integer labels")
    return _scaled(x), y.astype(np.int64)


def _read_idx(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx_pair(folder, *IDX_PAIR)
    return _scaled(x), y


def label_index(name: str, info: DatasetInfo, spec: SiteSpec, where: Path) -> int:
    """A class named by the dataset's class names, or by its label number."""
    if name in info.class_names:
        return info.class_names.index(name)
    if name.isdigit() and int(name) < spec.num_classes:
        return int(name)
    known = ", ".join(info.class_names) or f"0..{spec.num_classes - 1}"
    raise DatasetError(f"'{where}': class '{name}' is not one of the dataset's "
                       f"classes ({known}); rename it")


def _read_class_folders(root: Path, info: DatasetInfo, spec: SiteSpec
                        ) -> tuple[np.ndarray, np.ndarray]:
    files = class_image_files(root)
    label = {name: label_index(name, info, spec, root / name) for name in files}
    paths = [path for name in files for path in files[name]]
    if not paths:
        raise DatasetError(f"'{root}' holds no .png/.jpg images; put images of one "
                           "size in <class>/ subfolders")
    labels = [label[name] for name in files for _ in files[name]]
    pixels = read_image_files(paths, grey=spec.input_shape[0] == 1)
    return _scaled(pixels), np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------- text


def hashed_ids(texts: list[str], *, vocab_size: int, max_len: int) -> np.ndarray:
    """Token ids from a stable hash of each word: equal at every site, no vocabulary."""
    from fedsim.fedmodels.text import PAD_ID, tokenize

    buckets = vocab_size - RESERVED_IDS
    out = np.full((len(texts), max_len), PAD_ID, dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [RESERVED_IDS + zlib.crc32(w.encode()) % buckets
               for w in tokenize(text)[:max_len]]
        out[row, : len(ids)] = ids
    return out


def read_text(folder: Path, spec: SiteSpec) -> tuple[np.ndarray, np.ndarray]:
    """data.csv or train.csv with text,label columns, as hashed token ids."""
    path = next((folder / n for n in TEXT_FILES if (folder / n).is_file()), None)
    if path is None:
        raise DatasetError(f"site data folder '{folder}' has no "
                           f"{' or '.join(TEXT_FILES)}; put {LAYOUTS['text']} in it "
                           f"(dataset '{spec.dataset}')")
    info = dataset_info(spec.dataset)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read '{path}' ({err}); it must be UTF-8 CSV with "
                           "columns text,label") from err
    if not rows or not {"text", "label"} <= set(rows[0]):
        raise DatasetError(f"'{path}' needs a header row with columns text,label")
    labels = [label_index(str(r["label"]).strip(), info, spec, path) for r in rows]
    ids = hashed_ids([str(r["text"] or "") for r in rows],
                     vocab_size=int(spec.vocab_size or 0) or _no_vocab(spec),
                     max_len=spec.input_shape[0])
    return ids, np.asarray(labels, dtype=np.int64)


def _no_vocab(spec: SiteSpec) -> int:
    raise DatasetError(f"the run's model for dataset '{spec.dataset}' has no "
                       "vocabulary size; use model 'text' for text datasets")
