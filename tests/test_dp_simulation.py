"""DP end to end: real Opacus on every client of a real Ray simulation."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedsim.config import build_config
from fedsim.privacy.accounting import default_delta, epsilon, would_exceed
from fedsim.privacy.ledger import PrivacyLedger
from fedsim.reports.write import write_run_report
from fedsim.simulations.runner import simulate
from tests.conftest import DP_BUDGET as BUDGET


@pytest.fixture(scope="module")
def dp_run(budgeted_dp_run):
    return budgeted_dp_run


TARGET = 3.0


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """`fedsim run --clients 20 --rounds 10 --fraction 0.3 --dp --target-epsilon 3`."""
    out = tmp_path_factory.mktemp("calibrated") / "run"
    cfg = build_config({"clients": 20, "rounds": 10, "fraction": 0.3, "local_epochs": 1,
                        "batch_size": 16, "seed": 11, "dp": True,
                        "target_epsilon": TARGET, "device": "cpu", "out": str(out)})
    return simulate(cfg)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _by_client(records):
    out = {}
    for r in records:
        out.setdefault(r.client_id, []).append(r)
    return out


def test_ledger_epsilon_is_opacus_value_for_the_history(dp_run):
    records = PrivacyLedger(dp_run.run_dir / "privacy" / "ledger.jsonl").records()
    assert records, "a DP run must write ledger records"
    for cid, recs in _by_client(records).items():
        spent = [r for r in recs if r.steps > 0]
        accountant = RDPAccountant()
        for i, rec in enumerate(spent):
            accountant.history.append((rec.noise_multiplier, rec.sample_rate, rec.steps))
            assert rec.epsilon == pytest.approx(accountant.get_epsilon(rec.delta), rel=1e-9)
            assert rec.delta == default_delta(json.loads(
                (dp_run.run_dir / "partitions.json").read_text())["clients"][str(cid)]["train"])
            if i:
                assert rec.epsilon > spent[i - 1].epsilon, "epsilon must grow"


def test_target_epsilon_holds_for_every_client_however_often_sampled(calibrated_run):
    records = PrivacyLedger(calibrated_run.run_dir / "privacy" / "ledger.jsonl").records()
    spent = {cid: [r for r in recs if r.steps > 0]
             for cid, recs in _by_client(records).items()}
    assert len(spent) >= 15 and _rows(calibrated_run.run_dir)[-1]["round"] == 10
    # Sampling is random: some client trains more often than the expected 3 of 10
    # rounds (before, such clients ended above the target).
    assert max(len(recs) for recs in spent.values()) > 3
    assert max(recs[-1].epsilon for recs in spent.values()) <= TARGET
    assert _rows(calibrated_run.run_dir)[-1]["eps_max"] <= TARGET
    for recs in spent.values():  # and every figure is Opacus' for the history
        accountant = RDPAccountant()
        for rec in recs:
            assert rec.budget == TARGET  # the budget defaults to the target
            accountant.history.append((rec.noise_multiplier, rec.sample_rate, rec.steps))
            assert rec.epsilon == pytest.approx(accountant.get_epsilon(rec.delta),
                                                rel=1e-9)


def test_epsilon_unchanged_in_rounds_a_client_sat_out(dp_run):
    records = PrivacyLedger(dp_run.run_dir / "privacy" / "ledger.jsonl").records()
    rows = _rows(dp_run.run_dir)
    trained = {(r.round, r.client_id) for r in records if r.steps > 0}
    # eps_max per round equals the max over the latest record of each client so far
    latest = {}
    for row in rows:
        for r in records:
            if r.round == row["round"] and r.steps > 0:
                latest[r.client_id] = r.epsilon
        assert row["eps_max"] == pytest.approx(max(latest.values(), default=0.0))
    sat_out = [(rnd, c) for rnd in range(1, len(rows) + 1) for c in range(4)
               if (rnd, c) not in trained]
    assert sat_out, "fraction 0.5 must leave clients out of some rounds"


def test_budget_stops_a_client_exactly_when_next_round_would_exceed(dp_run):
    records = PrivacyLedger(dp_run.run_dir / "privacy" / "ledger.jsonl").records()
    for cid, recs in _by_client(records).items():
        spent = [r for r in recs if r.steps > 0]
        assert all(r.epsilon <= BUDGET for r in spent)
        markers = [r for r in recs if r.steps == 0]
        if not markers:
            continue
        history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in spent]
        last = spent[-1]
        exceed, eps_next = would_exceed(history, (last.noise_multiplier, last.sample_rate,
                                                  last.steps),
                                        delta=last.delta, accountant="rdp", budget=BUDGET)
        assert exceed and eps_next > BUDGET
        assert markers[0].epsilon == last.epsilon
        assert not markers[0].released
    rows = _rows(dp_run.run_dir)
    assert rows[-1]["exhausted_clients"] >= 1


def test_killed_run_leaves_a_complete_ledger(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedsim", "run", "--clients", "4", "--rounds", "30",
           "--fraction", "0.5", "--local-epochs", "1", "--dp", "--noise-multiplier", "5",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run did not reach round 3 in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = _rows(out)
    records = PrivacyLedger(out / "privacy" / "ledger.jsonl").records()
    for row in rows:  # every aggregated update has its durable ledger record
        in_round = [r for r in records if r.round == row["round"] and r.released]
        assert len(in_round) >= row["clients_replied"]
    for cid, recs in _by_client(records).items():
        hist = [(r.noise_multiplier, r.sample_rate, r.steps) for r in recs]
        assert recs[-1].epsilon == pytest.approx(
            epsilon(hist, delta=recs[-1].delta, accountant="rdp"), rel=1e-9)
    assert not (out / "summary.json").exists()


def _model(run_dir):
    state = torch.load(run_dir / "model.pt", weights_only=True)
    return torch.cat([v.flatten() for v in state.values()])


def test_same_seed_dp_runs_differ_unless_noise_is_insecure(tmp_path):
    base = {"clients": 2, "rounds": 1, "fraction": 1.0, "local_epochs": 1,
            "batch_size": 32, "seed": 5, "dp": True, "noise_multiplier": 1.0,
            "device": "cpu"}
    runs = {}
    for name, insecure in (("secret_a", False), ("secret_b", False),
                           ("insecure_a", True), ("insecure_b", True)):
        cfg = build_config({**base, "insecure_reproducible_noise": insecure,
                            "out": str(tmp_path / name)})
        runs[name] = simulate(cfg)
    # Secret noise: the server cannot repeat (nor remove) a client's noise.
    assert not torch.equal(_model(runs["secret_a"].run_dir), _model(runs["secret_b"].run_dir))
    # Insecure: (seed, round, client) fix the noise; the run repeats bit for bit.
    assert torch.equal(_model(runs["insecure_a"].run_dir), _model(runs["insecure_b"].run_dir))
    assert runs["secret_a"].summary["dp_against_server"] is True
    assert runs["insecure_a"].summary["dp_against_server"] is False
    secret = write_run_report(runs["secret_a"].run_dir)
    insecure = write_run_report(runs["insecure_a"].run_dir)
    assert "no DP against the server" in insecure.markdown.read_text()
    assert "no DP against the server" in insecure.html.read_text()
    assert "no DP against the server" not in secret.markdown.read_text()
    privacy = json.loads((runs["insecure_a"].run_dir / "privacy.json").read_text())
    assert privacy["dp_against_server"] is False
