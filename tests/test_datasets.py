"""Dataset loaders: each on-disk format, the embedded sets, the team data, errors."""

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fedsim.errors import DatasetError
from fedsim.fedmodels import loaders
from fedsim.fedmodels.datasets import (
    dataset_info,
    dataset_names,
    load_dataset,
    split_train_test,
)
from fedsim.fedmodels.text import PAD_ID, UNK_ID, build_vocab, encode, tokenize

SHARED_DATA = Path(os.environ.get(
    "FEDSIM_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
LOCAL_FILES = {"mnist-10k": "MNIST's four IDX files", "ag_news-7600": "AG News' "
               "train.csv and test.csv (ag_news_csv layout)"}


def shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"needs {LOCAL_FILES.get(name, 'local dataset files')} in "
                    f"{folder}, which fedsim does not ship; set FEDSIM_TEST_DATA to a "
                    f"folder holding {name}/ to run it")
    return folder


@pytest.fixture(autouse=True)
def no_hub(monkeypatch, tmp_path):
    """No test may reach the network or a real cache."""
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=5.0: False)


# ---------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist_files(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with path.open("wb") as handle:
        batch = {b"batch_label": b"x", b"data": data, b"labels": labels}
        pickle.dump(batch, handle, protocol=2)
    return data, labels


def write_png(path: Path, size: tuple[int, int], mode: str, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def write_csv(path: Path, rows: list[tuple]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_gzipped_or_raw(tmp_path, gz, name):
    arrays = write_mnist_files(tmp_path, gz=gz)
    bundle = load_dataset(name, data_dir=tmp_path)
    assert bundle.x_train.shape == (12, 1, 28, 28)
    assert bundle.x_test.shape == (5, 1, 28, 28)
    assert bundle.x_train.dtype == np.float32 and bundle.y_train.dtype == np.int64
    np.testing.assert_allclose(bundle.x_train[:, 0] * 255.0, arrays["train"][0],
                               atol=1e-3)
    np.testing.assert_array_equal(bundle.y_test, arrays["t10k"][1])
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)


def test_idx_files_in_raw_subfolder(tmp_path):
    write_mnist_files(tmp_path / "raw", gz=True)
    assert load_dataset("mnist", data_dir=tmp_path).x_train.shape == (12, 1, 28, 28)


def test_idx_bad_magic_is_a_dataset_error(tmp_path):
    write_mnist_files(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DatasetError, match="magic"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_partial_folder_names_missing_files(tmp_path):
    write_mnist_files(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="lacks t10k-labels-idx1-ubyte") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value) and "--data-dir" in str(err.value)


# ---------------------------------------------------------------- CIFAR-10


def test_cifar_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    first = [write_cifar_batch(folder / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    test_data, test_labels = write_cifar_batch(folder / "test_batch", 4, 9)
    bundle = load_dataset("cifar10", data_dir=tmp_path)
    assert bundle.x_train.shape == (15, 3, 32, 32)
    assert bundle.x_test.shape == (4, 3, 32, 32)
    # The row layout is 1024 red, then green, then blue bytes, each row-major 32x32.
    red = first[0][0][0, :1024].reshape(32, 32)
    np.testing.assert_allclose(bundle.x_train[0, 0] * 255.0, red, atol=1e-3)
    np.testing.assert_array_equal(bundle.y_test, test_labels)
    assert bundle.class_names[0] == "airplane"


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to load \w+\.print"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------- ImageFolder


def test_image_folder_rgb(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for value, cls in ((10, "cat"), (200, "dog")):
            for i in range(n):
                write_png(tmp_path / split / cls / f"{i}.png", (6, 5), "RGB", value)
    bundle = load_dataset("imagefolder", data_dir=tmp_path)
    assert bundle.x_train.shape == (6, 3, 5, 6)  # (N, C, height, width)
    assert bundle.class_names == ("cat", "dog")
    assert bundle.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert bundle.x_test[1, 0, 0, 0] == pytest.approx(200 / 255)


def test_image_folder_grey_and_size_check(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", (8, 8), "L", 255)
    write_png(tmp_path / "test" / "a" / "0.png", (8, 8), "L", 0)
    bundle = load_dataset("imagefolder", data_dir=tmp_path)
    assert bundle.input_shape == (1, 8, 8) and bundle.x_train.max() == 1.0
    write_png(tmp_path / "train" / "a" / "1.png", (9, 8), "L", 0)
    with pytest.raises(DatasetError, match="one size"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_image_folder_needs_train_and_test(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"train/<class>/\*\.png"):
        load_dataset("imagefolder", data_dir=tmp_path)


# ---------------------------------------------------------------- text files


def test_ag_news_csv_layout(tmp_path):
    write_csv(tmp_path / "train.csv", [
        ("1", "Talks fail", "Leaders met in Geneva\\again."),
        ("2", "Cup final", "The team won the cup, fans cheered."),
        ("2", "Team wins", "A team won."),
    ])
    write_csv(tmp_path / "test.csv", [("3", "Stocks", "Shares of the team fell.")])
    (tmp_path / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    bundle = load_dataset("ag_news", data_dir=tmp_path, max_len=8)
    assert bundle.kind == "text" and bundle.x_train.shape == (3, 8)
    assert bundle.x_train.dtype == np.int64 and bundle.input_shape == (8,)
    assert bundle.y_train.tolist() == [0, 1, 1] and bundle.y_test.tolist() == [2]
    assert bundle.class_names == ("World", "Sports", "Business", "Sci/Tech")
    assert bundle.num_classes == 4
    # Vocabulary from training texts only, words seen twice or more: team, won, the, ...
    assert bundle.vocab_size is not None and bundle.x_train.max() < bundle.vocab_size
    assert UNK_ID in bundle.x_test[0]  # 'stocks', 'shares' never occur in training


def test_ag_news_bad_class_index(tmp_path):
    write_csv(tmp_path / "train.csv", [("7", "t", "d")])
    write_csv(tmp_path / "test.csv", [("1", "t", "d")])
    with pytest.raises(DatasetError, match="class index 7"):
        load_dataset("ag_news", data_dir=tmp_path)


def test_text_label_csv_with_string_labels(tmp_path):
    train = [("text", "label"), ("good movie great", "pos"), ("bad awful", "neg"),
             ("great fun good", "pos"), ("awful bad boring", "neg")]
    write_csv(tmp_path / "train.csv", train)
    test = [("text", "label"), ("great", "pos"), ("bad", "neg")]
    write_csv(tmp_path / "test.csv", test)
    bundle = load_dataset("csv", data_dir=tmp_path, max_len=4)
    assert bundle.class_names == ("neg", "pos")  # sorted names -> ids
    assert bundle.y_train.tolist() == [1, 0, 1, 0] and bundle.y_test.tolist() == [1, 0]
    assert bundle.x_test.shape == (2, 4) and bundle.x_test[0, 1] == PAD_ID


def test_text_label_parquet_with_integer_labels(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["a b", "c d", "a c"], "label": [0, 2, 0]}).to_parquet(
        tmp_path / "train.parquet")
    pd.DataFrame({"text": ["a"], "label": [1]}).to_parquet(tmp_path / "test.parquet")
    bundle = load_dataset("csv", data_dir=tmp_path)
    assert bundle.num_classes == 3 and bundle.y_train.tolist() == [0, 2, 0]


def test_text_label_csv_unknown_test_label(tmp_path):
    write_csv(tmp_path / "train.csv", [("text", "label"), ("x", "a")])
    write_csv(tmp_path / "test.csv", [("text", "label"), ("y", "b")])
    with pytest.raises(DatasetError, match="never occur in the training file"):
        load_dataset("csv", data_dir=tmp_path)


def test_text_label_csv_wrong_columns(tmp_path):
    write_csv(tmp_path / "train.csv", [("sentence", "y"), ("x", "a")])
    write_csv(tmp_path / "test.csv", [("sentence", "y"), ("x", "a")])
    with pytest.raises(DatasetError, match="needs 'text' and 'label' columns"):
        load_dataset("csv", data_dir=tmp_path)


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_vocab_and_encoding():
    assert tokenize("Don't STOP, U.S. 2-1!") == ["don't", "stop", "u", "s", "2", "1"]
    assert tokenize("Café_au lait") == ["café", "au", "lait"]
    vocab = build_vocab(["b a a", "c b a"], max_size=4)
    assert vocab.tokens == ("<pad>", "<unk>", "a", "b")  # by count, then alphabetical
    ids = encode(["a c b a", ""], vocab, max_len=3)
    assert ids.tolist() == [[2, UNK_ID, 3], [PAD_ID] * 3]
    assert build_vocab(["x y y"], min_count=2).tokens[2:] == ("y",)
    assert build_vocab(["x y y"], max_len=1).tokens[2:] == ("x",)


# ---------------------------------------------------------------- embedded data


def test_mnist_5k_embedded():
    bundle = load_dataset("mnist-5k")
    assert bundle.x_train.shape == (4000, 1, 28, 28)
    assert bundle.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(bundle.y_test).tolist() == [100] * 10
    assert 0.0 <= bundle.x_train.min() and bundle.x_train.max() <= 1.0
    assert len(np.unique(bundle.y_train[:50])) > 5  # shuffled, not sorted by label
    again = load_dataset("mnist-5k", seed=7)  # canonical split: seed does not move it
    np.testing.assert_array_equal(again.y_test, bundle.y_test)


def test_bbc_news_embedded():
    bundle = load_dataset("bbc-news", max_len=32)
    total = len(bundle.y_train) + len(bundle.y_test)
    assert bundle.num_classes == 5 and total < 2225
    assert bundle.class_names == (
        "business", "entertainment", "politics", "sports", "tech")
    assert bundle.x_train.shape[1] == 32 and bundle.kind == "text"
    assert np.bincount(bundle.y_test, minlength=5).min() > 50


@pytest.mark.parametrize("name", ["digits", "mnist-5k", "bbc-news"])
def test_static_facts_match_embedded_data(name):
    info, bundle = dataset_info(name), load_dataset(name)
    assert info.train_size == len(bundle.y_train)
    assert info.test_size == len(bundle.y_test)
    assert info.num_classes == bundle.num_classes
    assert info.class_names == bundle.class_names
    if info.input_shape is not None:
        assert info.input_shape == bundle.input_shape


# ---------------------------------------------------------------- team data


def test_shared_mnist_10k():
    bundle = load_dataset("mnist", data_dir=shared("mnist-10k"))
    assert bundle.x_train.shape == (8000, 1, 28, 28)
    assert bundle.x_test.shape == (2000, 1, 28, 28)
    full = np.bincount(np.concatenate([bundle.y_train, bundle.y_test]))
    assert full.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_shared_ag_news_7600():
    bundle = load_dataset("ag_news", data_dir=shared("ag_news-7600"))
    assert (len(bundle.y_train), len(bundle.y_test)) == (6000, 1600)
    full = np.bincount(np.concatenate([bundle.y_train, bundle.y_test]))
    assert full.tolist() == [1900] * 4
    assert bundle.x_train.shape == (6000, 64) and 5_000 < bundle.vocab_size <= 20_000


# ---------------------------------------------------------------- errors, hub, cache


@pytest.mark.parametrize("name,file", [
    ("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1"),
    ("ag_news", "train.csv"), ("csv", "train.csv"), ("imagefolder", "train/<class>"),
])
def test_missing_local_folder_names_files_and_path(tmp_path, name, file):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        load_dataset(name, data_dir=missing)
    message = str(err.value)
    assert file in message and str(missing) in message and "--data-dir" in message
    assert "\n" not in message


def test_offline_without_data_dir_says_what_to_do():
    with pytest.raises(DatasetError, match="cannot be reached") as err:
        load_dataset("fashion-mnist")
    assert "t10k-images-idx3-ubyte" in str(err.value) and "--data-dir" in str(err.value)
    with pytest.raises(DatasetError, match="no download"):
        load_dataset("csv")


def test_hub_failure_is_a_dataset_error(monkeypatch):
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=5.0: True)

    def fail(hub_id):
        raise ConnectionError(f"Couldn't reach '{hub_id}' on the Hub")

    monkeypatch.setattr(loaders, "_hub_load", fail)
    with pytest.raises(DatasetError, match="cannot fetch dataset 'ag_news'.*fancyzhx"):
        load_dataset("ag_news")


def fake_hub_images():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    digits = ClassLabel(names=[str(i) for i in range(10)])
    features = Features({"image": Image(), "label": digits})
    split = Dataset.from_dict(
        {"image": [PILImage.new("L", (28, 28), 255), PILImage.new("L", (28, 28), 0)],
         "label": [3, 7]}, features=features)
    return DatasetDict({"train": split, "test": split})


def test_hub_images_are_converted_and_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=5.0: True)
    monkeypatch.setattr(loaders, "_hub_load", lambda hub_id: fake_hub_images())
    bundle = load_dataset("mnist")
    assert bundle.x_train.shape == (2, 1, 28, 28) and bundle.y_train.tolist() == [3, 7]
    assert bundle.x_train[0].min() == 1.0 and bundle.x_train[1].max() == 0.0
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    monkeypatch.setattr(loaders, "_hub_load", lambda hub_id: 1 / 0)  # cache, not hub
    np.testing.assert_array_equal(load_dataset("mnist").x_test, bundle.x_test)


def test_hub_texts_are_converted_and_cached(monkeypatch):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    topics = ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])
    features = Features({"text": Value("string"), "label": topics})
    split = Dataset.from_dict(
        {"text": ["café news news", "sport sport"], "label": [0, 1]}, features=features)
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout=5.0: True)
    hub = DatasetDict(train=split, test=split)
    monkeypatch.setattr(loaders, "_hub_load", lambda hub_id: hub)
    first = load_dataset("ag_news", max_len=4)
    monkeypatch.setattr(loaders, "_hub_load", lambda hub_id: 1 / 0)
    second = load_dataset("ag_news", max_len=4)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert second.class_names[1] == "Sports" and second.vocab_size == 4


def test_bad_max_len_and_unknown_name():
    with pytest.raises(DatasetError, match="max-len"):
        load_dataset("bbc-news", max_len=0)
    with pytest.raises(DatasetError, match="choose one of"):
        load_dataset("imagenet")


def test_split_train_test_is_stratified():
    y = np.repeat(np.arange(4), 10)
    _, y_tr, _, y_te = split_train_test(np.arange(40), y, test_fraction=0.2, seed=1)
    assert np.bincount(y_te).tolist() == [2] * 4 and len(y_tr) == 32


# ---------------------------------------------------------------- CLI


def test_datasets_command_lists_every_dataset():
    from fedsim.cli.catalog import datasets

    app = typer.Typer()
    app.command("datasets")(datasets)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    result = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in dataset_names():
        assert name in result.output
    assert "ylecun/mnist" in result.output and "120,000" in result.output
    assert "train-images-idx3-ubyte" in result.output
