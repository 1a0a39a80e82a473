"""Real Flower simulations on Ray: a handful of clients, two rounds."""

import json

import numpy as np
import pytest
import torch

from fedsim.config import build_config
from fedsim.simulations.runner import simulate

ROUND_KEYS = {
    "round", "train_loss", "fed_accuracy", "fed_loss", "central_accuracy",
    "central_loss", "clients_sampled", "clients_replied", "rejected", "failed",
    "bytes_sent", "bytes_received", "round_time_s",
}


def _small(tmp_path, name, **extra):
    values = {"clients": 4, "rounds": 2, "fraction": 0.5, "local_epochs": 1,
              "batch_size": 16, "out": str(tmp_path / name), "seed": 7, **extra}
    return build_config(values)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    first = simulate(_small(tmp, "a"))
    second = simulate(_small(tmp, "b"))
    return first, second


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents(two_runs):
    outcome, _ = two_runs
    run_dir = outcome.run_dir
    for name in ("config.json", "metrics.jsonl", "model.pt", "summary.json", "partitions.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["clients"] == 4 and config["rounds"] == 2
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert ROUND_KEYS <= set(row)
        assert row["clients_sampled"] == 2 and row["clients_replied"] == 2
        assert row["bytes_sent"] > 0 and row["bytes_received"] > 0
        assert 0.0 <= row["central_accuracy"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["rounds_completed"] == 2
    assert summary["client_updates"] == 4
    partitions = json.loads((run_dir / "partitions.json").read_text())
    assert len(partitions["clients"]) == 4


def test_training_changes_the_model_and_learns(two_runs):
    outcome, _ = two_runs
    rows = _rows(outcome.run_dir)
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert rows[-1]["central_accuracy"] > summary["initial_central_accuracy"]
    state = torch.load(outcome.run_dir / "model.pt")
    assert "features.0.weight" in state


def test_same_seed_same_metrics_and_model(two_runs):
    first, second = two_runs
    drop = {"round_time_s"}
    a = [{k: v for k, v in r.items() if k not in drop} for r in _rows(first.run_dir)]
    b = [{k: v for k, v in r.items() if k not in drop} for r in _rows(second.run_dir)]
    assert a == b
    ma = torch.load(first.run_dir / "model.pt")
    mb = torch.load(second.run_dir / "model.pt")
    for key in ma:
        assert np.array_equal(ma[key].numpy(), mb[key].numpy())


def test_bad_replies_are_rejected_and_round_goes_on(tmp_path, caplog):
    from tests import faulty_clients

    cfg = _small(tmp_path, "faulty", clients=6, fraction=1.0, rounds=2)
    caplog.set_level("WARNING", logger="fedsim")
    outcome = simulate(cfg, client_app=faulty_clients.app)
    rows = _rows(outcome.run_dir)
    assert len(rows) == 2
    for row in rows:
        assert row["clients_sampled"] == 6
        assert row["clients_replied"] == 2  # clients 4 and 5 are honest
        assert row["rejected"] == 3 and row["failed"] == 1
        assert np.isfinite(row["central_loss"])
    log = caplog.text
    assert "rejected reply from client 0" in log and "NaN" in log
    assert "rejected reply from client 1" in log and "shape" in log
    assert "rejected reply from client 2" in log and "weight" in log
    assert "failed" in log
