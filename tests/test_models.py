"""Models: the FedAvg CNN's size, the text model, Opacus compatibility, the catalog."""

import time
import warnings

import numpy as np
import pytest
import torch
import typer
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from fedsim.errors import ConfigError
from fedsim.fedmodels.models import (
    ModelSpec,
    TextClassifier,
    build_model,
    count_parameters,
    model_names,
)
from fedsim.fedmodels.text import build_vocab, encode

IMAGE_SPECS = {
    "digits": ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10),
    "mnist": ModelSpec(name="cnn", input_shape=(1, 28, 28), num_classes=10),
    "cifar10": ModelSpec(name="cnn", input_shape=(3, 32, 32), num_classes=10),
}
DP_SPECS = {
    "digits": ModelSpec(name="dp-cnn", input_shape=(1, 8, 8), num_classes=10),
    "mnist": ModelSpec(name="dp-cnn", input_shape=(1, 28, 28), num_classes=10),
    "cifar10": ModelSpec(name="dp-cnn", input_shape=(3, 32, 32), num_classes=10),
}
TEXT_SPEC = ModelSpec(name="text", input_shape=(16,), num_classes=3, vocab_size=50)
ALL_SPECS = [*IMAGE_SPECS.values(), *DP_SPECS.values(), TEXT_SPEC]


def fake_batch(spec: ModelSpec, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if spec.vocab_size is not None:
        x = torch.randint(0, spec.vocab_size, (n, *spec.input_shape), generator=gen)
    else:
        x = torch.rand((n, *spec.input_shape), generator=gen)
    return x, torch.randint(0, spec.num_classes, (n,), generator=gen)


def test_fedavg_cnn_has_the_papers_parameter_count():
    assert count_parameters(build_model(IMAGE_SPECS["mnist"])) == 1_663_370


def test_dp_cnn_is_the_tanh_model_of_papernot_et_al():
    # 28x28: conv 16@8x8/2, pool 2/1, conv 32@4x4/2, pool 2/1, FC 512->32, FC 32->10.
    model = build_model(DP_SPECS["mnist"])
    assert count_parameters(model) == 26_010
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert count_parameters(build_model(DP_SPECS["digits"])) < 20_000
    with pytest.raises(ConfigError, match="at least 6x6"):
        build_model(ModelSpec(name="dp-cnn", input_shape=(1, 5, 5), num_classes=10))


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.name}{s.input_shape}")
def test_models_produce_logits(spec):
    x, _ = fake_batch(spec, 3)
    assert build_model(spec)(x).shape == (3, spec.num_classes)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.name}{s.input_shape}")
def test_every_model_is_opacus_compatible(spec):
    ModuleValidator.validate(build_model(spec), strict=True)  # raises when not


@pytest.mark.parametrize("spec",
                         [IMAGE_SPECS["digits"], IMAGE_SPECS["mnist"], TEXT_SPEC],
                         ids=lambda s: f"{s.name}{s.input_shape}")
def test_one_dp_sgd_step(spec):
    torch.manual_seed(0)
    model = build_model(spec)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = fake_batch(spec, 8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and accountant notices
        private, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0)
        xb, yb = next(iter(loader))
        optimizer.zero_grad()
        nn.functional.cross_entropy(private(xb), yb).backward()
        optimizer.step()
    after = list(model.parameters())
    assert all(p.grad_sample is None or len(p.grad_sample) == len(yb) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def keyword_task(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Label 1 exactly when the word 'keyword' appears among 12 random words."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    texts, labels = [], rng.integers(0, 2, size=n)
    for label in labels:
        tokens = list(rng.choice(words, size=12))
        if label:
            tokens[rng.integers(12)] = "keyword"
        texts.append(" ".join(tokens))
    return texts, labels


def test_text_model_learns_a_keyword_task_quickly():
    torch.manual_seed(0)
    train_texts, y_train = keyword_task(2000, seed=1)
    test_texts, y_test = keyword_task(500, seed=2)
    vocab = build_vocab(train_texts)
    x_train = torch.as_tensor(encode(train_texts, vocab, max_len=16))
    x_test = torch.as_tensor(encode(test_texts, vocab, max_len=16))
    model = TextClassifier(len(vocab), 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a simulated client; fast for a model this small
    started = time.perf_counter()
    try:
        for idx in torch.randperm(len(y_train)).split(10):  # one epoch, B=10, lr 0.2
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]),
                                        torch.as_tensor(y_train)[idx]).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - started
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1).numpy() == y_test).mean()
    assert accuracy > 0.9 and elapsed < 10.0, (accuracy, elapsed)


def test_padding_does_not_change_the_prediction():
    model = TextClassifier(20, 2)
    with torch.no_grad():
        model.embedding.weight[0] += 100.0  # e.g. DP noise landing on the padding row
        short = model(torch.tensor([[5, 6, 7]]))
        padded = model(torch.tensor([[5, 6, 7, 0, 0, 0]]))
    torch.testing.assert_close(short, padded)


def test_each_word_counts_once():
    model = TextClassifier(20, 2)
    with torch.no_grad():
        once = model(torch.tensor([[5, 6, 0, 0]]))
        repeated = model(torch.tensor([[5, 6, 5, 5]]))
    torch.testing.assert_close(once, repeated)


def test_model_spec_round_trips_vocab_size():
    assert ModelSpec.from_dict(TEXT_SPEC.to_dict()) == TEXT_SPEC
    assert ModelSpec.from_dict(IMAGE_SPECS["mnist"].to_dict()) == IMAGE_SPECS["mnist"]
    old = {"name": "cnn", "input_shape": [1, 8, 8], "num_classes": 10}  # pre-text runs
    assert ModelSpec.from_dict(old).vocab_size is None


def test_wrong_model_for_the_data_is_a_config_error():
    with pytest.raises(ConfigError, match="model 'text' needs a text dataset"):
        build_model(ModelSpec(name="text", input_shape=(1, 28, 28), num_classes=10))
    with pytest.raises(ConfigError, match="model 'cnn' needs image input"):
        build_model(ModelSpec(name="cnn", input_shape=(64,), num_classes=4,
                              vocab_size=9))
    with pytest.raises(ConfigError, match="choose one of"):
        build_model(ModelSpec(name="resnet", input_shape=(1, 8, 8), num_classes=10))


def catalog_app() -> typer.Typer:
    from fedsim.cli.catalog import datasets, models

    app = typer.Typer()
    app.command("models")(models)
    app.command("datasets")(datasets)
    return app


@pytest.mark.parametrize("dataset,model,count", [
    ("mnist", "cnn", "1,663,370"), ("cifar10", "cnn", "2,156,490"),
    ("digits", "cnn", "188,810"), ("ag_news", "text", "640,132"),
])
def test_models_command_shows_parameter_counts(dataset, model, count):
    result = CliRunner().invoke(catalog_app(), ["models", "--dataset", dataset],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith(f"│ {model} "))
    assert count in row
    assert set(model_names()) <= set(result.output.split())


def test_models_command_rejects_unknown_dataset():
    result = CliRunner().invoke(catalog_app(), ["models", "--dataset", "imagenet"])
    assert result.exit_code != 0 and "choose one of" in str(result.exception)
