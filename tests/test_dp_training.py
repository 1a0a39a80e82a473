import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from fedsim.client.dp import DPTrainResult, train_dp, validate_model
from fedsim.client.dp_random import DPRandomness
from fedsim.errors import ConfigError
from fedsim.fedmodels.models import FedAvgCNN, ModelSpec, build_model, model_names
from fedsim.fedmodels.training import evaluate
from fedsim.privacy import accounting

CPU = torch.device("cpu")
OPACUS_ATTRS = ("grad_sample", "_forward_counter", "_current_grad_sample",
                "_norm_sample", "summed_grad")


def tokens(n, seed=0, length=16, vocab=50):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (n, length))
    ids[:, length // 2 :] *= rng.random((n, 1)) < 0.5  # some padded (id 0) tails
    return ids, rng.integers(0, 4, n)


# A spec and example data for each registered model; a new model needs an entry.
MODEL_EXAMPLES = {
    "cnn": (ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10), None),
    "dp-cnn": (ModelSpec(name="dp-cnn", input_shape=(1, 8, 8), num_classes=10), None),
    "text": (ModelSpec(name="text", input_shape=(16,), num_classes=4, vocab_size=50),
             tokens),
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n, seed=0, shape=(1, 8, 8)):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n)


def run(model, x, y, *, seed=1, **overrides):
    """train_dp with a reproducible source (seed None: a secret one, as clients use)."""
    randomness = (DPRandomness.secret_source() if seed is None
                  else DPRandomness.reproducible(seed))
    settings = dict(epochs=1, batch_size=8, lr=0.5, noise_multiplier=1.0,
                    max_grad_norm=1.0, device=CPU, randomness=randomness)
    settings.update(overrides)
    return train_dp(model, x, y, **settings)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def manual_clipped_step(model, x, y, *, lr, max_grad_norm):
    """Reference DP-SGD step with every example sampled and no noise."""
    features, labels = torch.as_tensor(x), torch.as_tensor(y)
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(labels)):
        grads = torch.autograd.grad(
            F.cross_entropy(model(features[i : i + 1]), labels[i : i + 1]), params
        )
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    with torch.no_grad():
        for p, t in zip(params, total, strict=True):
            p -= lr * t / len(labels)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_every_registered_model_trains_privately(name, mode):
    # Prepare
    if name not in MODEL_EXAMPLES:
        pytest.fail(f"add a spec and example data for model '{name}' to MODEL_EXAMPLES")
    spec, make_data = MODEL_EXAMPLES[name]
    model = build_model(spec)
    x, y = (make_data or images)(16)
    before = snapshot(model)
    # Execute
    validate_model(model)
    result = run(model, x, y, batch_size=16, grad_sample_mode=mode)
    # Assert: one step (q = 1), in the mode asked for, that moved every tensor.
    assert (result.steps, result.grad_sample_mode) == (1, mode)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.rnn = nn.LSTM(4, 4)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_incompatible_layers_are_all_named_with_their_fix():
    # Execute
    with pytest.raises(ConfigError) as info:
        validate_model(WithBatchNorm())
    # Assert
    problems = info.value.problems
    assert len(problems) == 2
    batch_norm = next(p for p in problems if "BatchNorm2d" in p)
    assert "'features.1'" in batch_norm and "GroupNorm" in batch_norm
    lstm = next(p for p in problems if "'rnn'" in p)
    assert "DPLSTM" in lstm
    assert all("\n" not in p for p in problems)


def test_training_refuses_an_incompatible_model():
    x, y = images(8)
    with pytest.raises(ConfigError, match="features.1"):
        run(WithBatchNorm(), x, y)


def test_eval_mode_is_reported():
    model = FedAvgCNN((1, 8, 8), 10).eval()
    with pytest.raises(ConfigError, match="eval mode"):
        validate_model(model)


def test_bad_arguments_are_reported_together():
    x, y = images(8)
    with pytest.raises(ConfigError) as info:
        run(FedAvgCNN((1, 8, 8), 10), x, y, epochs=0, batch_size=0, lr=-1.0,
            noise_multiplier=-1.0, max_grad_norm=0.0, grad_sample_mode="magic")
    assert len(info.value.problems) == 6


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_noiseless_update_is_exact_per_example_clipping(mode):
    # Prepare: every example in the one batch (q = 1) and a bound that clips.
    torch.manual_seed(0)
    model = FedAvgCNN((1, 8, 8), 10)
    reference = FedAvgCNN((1, 8, 8), 10)
    reference.load_state_dict(model.state_dict())
    x, y = images(12)
    # Execute
    result = run(model, x, y, batch_size=12, noise_multiplier=0.0, max_grad_norm=0.05,
                 grad_sample_mode=mode)
    manual_clipped_step(reference, x, y, lr=0.5, max_grad_norm=0.05)
    # Assert
    assert (result.steps, result.sample_rate, result.grad_sample_mode) == (1, 1.0, mode)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MODEL_EXAMPLES))
def test_ghost_clipping_matches_hooks_on_the_same_batch(name):
    # Prepare
    spec, make_data = MODEL_EXAMPLES[name]
    torch.manual_seed(0)
    ghost, hooks = build_model(spec), build_model(spec)
    hooks.load_state_dict(ghost.state_dict())
    before = snapshot(ghost)
    x, y = (make_data or images)(16)
    # Execute: no noise, every example sampled, a clipping bound that binds.
    for model, mode in ((ghost, "ghost"), (hooks, "hooks")):
        run(model, x, y, batch_size=16, noise_multiplier=0.0, max_grad_norm=0.01,
            grad_sample_mode=mode)
    # Assert
    for key, value in hooks.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    assert all(not torch.equal(value, before[key])
               for key, value in hooks.state_dict().items())


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_noise_has_the_calibrated_std(mode):
    # Prepare: the same clipped step with and without noise.
    torch.manual_seed(0)
    clean, noisy = FedAvgCNN((1, 8, 8), 10), FedAvgCNN((1, 8, 8), 10)
    noisy.load_state_dict(clean.state_dict())
    x, y = images(8)
    # Execute
    run(clean, x, y, noise_multiplier=0.0, grad_sample_mode=mode)
    run(noisy, x, y, noise_multiplier=2.0, grad_sample_mode=mode)
    # Assert: weights differ by lr * N(0, (sigma * C)^2) / expected batch size.
    diff = torch.cat([(a - b).flatten() for a, b in
                      zip(clean.parameters(), noisy.parameters(), strict=True)])
    assert float(diff.detach().std()) == pytest.approx(0.5 * 2.0 * 1.0 / 8, rel=0.02)


def test_same_seed_same_model_other_seed_other_model():
    x, y = images(40)
    torch.manual_seed(0)
    a = FedAvgCNN((1, 8, 8), 10)
    b, c = FedAvgCNN((1, 8, 8), 10), FedAvgCNN((1, 8, 8), 10)
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    ra, rb = run(a, x, y, seed=5), run(b, x, y, seed=5)
    run(c, x, y, seed=6)
    assert ra == rb
    assert all(torch.equal(p, q)
               for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.classifier[1].weight, c.classifier[1].weight)


def test_secret_noise_differs_on_every_pass():
    x, y = images(40)
    torch.manual_seed(0)
    a, b = FedAvgCNN((1, 8, 8), 10), FedAvgCNN((1, 8, 8), 10)
    b.load_state_dict(a.state_dict())
    run(a, x, y, seed=None)
    run(b, x, y, seed=None)
    assert not torch.equal(a.classifier[1].weight, b.classifier[1].weight)


def test_randomness_is_uniform_gaussian_and_poisson():
    source = DPRandomness.secret_source()
    u = source.uniform(200_000)
    assert u.dtype == torch.float64 and 0.0 < float(u.min()) and float(u.max()) < 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    z = source.normal(200_001)
    assert z.shape == (200_001,) and z.dtype == torch.float64
    assert float(z.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(z.std()) == pytest.approx(1.0, rel=0.01)
    assert float((z.abs() > 1.959964).double().mean()) == pytest.approx(0.05, abs=0.003)
    mask = source.poisson_mask(100_000, 0.1)
    assert mask.dtype == torch.bool and float(mask.double().mean()) == pytest.approx(
        0.1, abs=0.004)
    # Each draw is fresh keystream; reproducible sources repeat, secret ones do not.
    assert not torch.equal(source.normal(8), source.normal(8))
    assert torch.equal(DPRandomness.reproducible(1, 2).normal(8),
                       DPRandomness.reproducible(1, 2).normal(8))
    assert not torch.equal(DPRandomness.reproducible(1, 2).normal(8),
                           DPRandomness.reproducible(1, 3).normal(8))
    assert not torch.equal(DPRandomness.secret_source().normal(8),
                           DPRandomness.secret_source().normal(8))


def test_model_comes_back_clean_and_can_train_again():
    # Prepare
    model = FedAvgCNN((1, 8, 8), 10)
    keys = list(model.state_dict())
    x, y = images(24)
    # Execute
    run(model, x, y)
    # Assert: own keys, no hooks, no Opacus attributes, no stale gradients.
    assert list(model.state_dict()) == keys
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert not hasattr(model, "autograd_grad_sample_hooks")
    assert not any(hasattr(m, "activations") for m in model.modules())
    for p in model.parameters():
        assert p.grad is None
        assert not any(hasattr(p, attr) for attr in OPACUS_ATTRS)
    assert run(model, x, y).steps == 3  # a second round wraps it afresh


def test_steps_and_sample_rate_are_what_really_happened(monkeypatch):
    # Prepare: count the optimizer steps torch really performs.
    calls = []
    real_step = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        calls.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = images(930)
    # Execute: 930 / 10 is the float case where Opacus takes 92, not 93, steps.
    result = run(model, x, y, batch_size=10, epochs=2)
    # Assert
    assert result.steps == len(calls) == 184
    assert result.steps == accounting.steps_per_participation(930, 10, 2)
    assert result.sample_rate == accounting.sample_rate(930, 10) == 1 / 93
    assert result.num_examples == 930


class Tied(nn.Module):
    """Uses one layer twice per forward pass: ghost clipping cannot do that."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.shared = nn.Linear(16, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        return self.out(torch.relu(self.shared(torch.relu(self.shared(h)))))


def test_ghost_falls_back_to_hooks_with_the_same_seed():
    # Prepare
    torch.manual_seed(0)
    ghost, hooks = Tied(), Tied()
    hooks.load_state_dict(ghost.state_dict())
    x, y = images(32)
    # Execute
    via_fallback = run(ghost, x, y, grad_sample_mode="ghost")
    direct = run(hooks, x, y, grad_sample_mode="hooks")
    # Assert
    assert via_fallback == direct
    assert via_fallback.grad_sample_mode == "hooks"
    assert all(torch.equal(p, q) for p, q in
               zip(ghost.parameters(), hooks.parameters(), strict=True))


def test_epsilon_grows_with_participations_as_planned():
    # Prepare
    x, y = images(60)
    model = FedAvgCNN((1, 8, 8), 10)
    history = []
    # Execute: three participations of two local epochs each.
    for round_ in range(3):
        result = run(model, x, y, seed=round_, epochs=2, batch_size=10,
                     noise_multiplier=1.2)
        history.append((1.2, result.sample_rate, result.steps))
    epsilons = [accounting.epsilon(history[:k], delta=1e-5, accountant="rdp")
                for k in (1, 2, 3)]
    # Assert: strictly growing, and exactly what the plan predicted.
    assert epsilons[0] < epsilons[1] < epsilons[2]
    planned = accounting.plan(rounds=3, fraction=1.0, local_epochs=2, batch_size=10,
                              dataset_size=60, noise_multiplier=1.2, delta=1e-5)
    assert tuple(epsilons) == pytest.approx(planned.epsilons, rel=1e-12)


def test_dp_training_on_real_digits_learns():
    # Prepare: 800 real digits, moderate noise (sigma 1, clip 1), secret noise as a
    # client draws it (so the outcome varies run to run; the bound holds for all).
    digits = load_digits()
    x = (digits.images[:800, None] / 16.0).astype(np.float32)
    y = digits.target[:800]
    torch.manual_seed(0)
    model = FedAvgCNN((1, 8, 8), 10)
    # Execute
    result = run(model, x, y, seed=None, epochs=8, batch_size=80, lr=1.0,
                 noise_multiplier=1.0, max_grad_norm=1.0)
    # Assert: far above chance (0.1); loss is too noisy a measure under DP noise.
    _, accuracy = evaluate(model, x, y, device=CPU)
    assert isinstance(result, DPTrainResult) and result.steps == 80
    assert accuracy > 0.5
