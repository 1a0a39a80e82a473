"""Accuracy of FedAvg on real data, against a centralized model on the same images.

MNIST, FedAvg CNN (1,663,370 parameters), 100 clients, C=0.1, E=5, B=10: the number
of rounds until the global model's test accuracy first reaches 99% of what the same
CNN reaches when trained centrally on the same training images (the union of the
clients' training splits), for an IID and the FedAvg paper's pathological non-IID
split (`shards`: 2 label-sorted shards per client).

AG News, text model, 100 clients, C=0.1, E=5, B=10: test accuracy after 20 rounds,
IID and Dirichlet(0.5) label skew (a centralized reference is printed beside it).

Defaults use the team's data (/work/shared/data: MNIST's 10k test set re-split
8,000/2,000, and AG News' 7,600 test rows re-split 6,000/1,600), so the numbers are
not comparable to papers trained on the full sets. Long: hours on a laptop CPU.

    python benchmarks/bench_accuracy.py                     # everything
    python benchmarks/bench_accuracy.py --clients 4 --rounds 2 --central-epochs 1 \
        --runs mnist-shards,ag_news-dirichlet               # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsim.config import RunConfig, build_config
from fedsim.fedmodels.models import build_model, count_parameters
from fedsim.fedmodels.store import open_store
from fedsim.fedmodels.training import evaluate, seeded_generator, train_epochs
from fedsim.simulations.runner import PreparedRun, simulate, start_run

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_SHARE = 0.99  # rounds to reach 99% of the centralized accuracy


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One federated run: which data, model and partition."""

    name: str
    dataset: str
    model: str
    partition: str  # iid, shards or dirichlet
    rounds_flag: str  # which --*-rounds flag sets its length


EXPERIMENTS = (
    Experiment(name="mnist-iid", dataset="mnist", model="cnn", partition="iid",
               rounds_flag="mnist_rounds"),
    Experiment(name="mnist-shards", dataset="mnist", model="cnn", partition="shards",
               rounds_flag="mnist_rounds"),
    Experiment(name="ag_news-iid", dataset="ag_news", model="text", partition="iid",
               rounds_flag="text_rounds"),
    Experiment(name="ag_news-dirichlet", dataset="ag_news", model="text",
               partition="dirichlet", rounds_flag="text_rounds"),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(SHARED / "mnist-10k"),
                   help="MNIST IDX files (dataset 'mnist')")
    p.add_argument("--text-data-dir", default=str(SHARED / "ag_news-7600"),
                   help="AG News ag_news_csv files (dataset 'ag_news')")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=None,
                   help="override both --mnist-rounds and --text-rounds")
    p.add_argument("--mnist-rounds", type=int, default=100,
                   help="upper limit; the result is the first round at the target")
    p.add_argument("--text-rounds", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.2, help="CNN learning rate")
    p.add_argument("--text-lr", type=float, default=0.2)
    p.add_argument("--central-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--runs", default=",".join(e.name for e in EXPERIMENTS),
                   help="comma-separated subset of: "
                   + ", ".join(e.name for e in EXPERIMENTS))
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def make_config(exp: Experiment, args: argparse.Namespace, out: Path) -> RunConfig:
    """The run configuration of one experiment."""
    rounds = args.rounds or getattr(args, exp.rounds_flag)
    text = exp.model == "text"
    return build_config({
        "dataset": exp.dataset, "model": exp.model, "partition": exp.partition,
        "data_dir": args.text_data_dir if text else args.data_dir,
        "clients": args.clients, "fraction": args.fraction, "rounds": rounds,
        "local_epochs": args.local_epochs, "batch_size": args.batch_size,
        "lr": args.text_lr if text else args.lr, "alpha": 0.5, "shards_per_client": 2,
        "seed": args.seed, "device": "cpu", "out": str(out / exp.name),
    })


def client_training_rows(started: PreparedRun) -> np.ndarray:
    """Row indices of every client's local training split (validation rows excluded)."""
    store = open_store(started.prepared.data_dir)
    rows = [store.client_split(cid).train for cid in range(started.config.clients)]
    return np.sort(np.concatenate(rows))


def centralized_curve(started: PreparedRun, *, epochs: int, lr: float,
                      batch_size: int, seed: int) -> list[float]:
    """Test accuracy after each epoch of the same model trained on all client rows."""
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    store = open_store(started.prepared.data_dir)
    rows = client_training_rows(started)
    x, y = store.array("x_train")[rows], store.array("y_train")[rows]
    x_test, y_test = store.test_data()
    model = build_model(started.prepared.model)
    device = torch.device("cpu")
    curve = []
    for epoch in range(epochs):
        train_epochs(model, x, y, epochs=1, batch_size=batch_size, lr=lr, device=device,
                     generator=seeded_generator(seed, epoch))
        curve.append(evaluate(model, x_test, y_test, device=device)[1])
        print(f"  centralized epoch {epoch + 1}/{epochs}: "
              f"test accuracy {curve[-1]:.4f}", flush=True)
    return curve


class CurveListener:
    """Collects the global model's test accuracy per round and prints progress."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.curve: list[float] = []

    def on_start(self, info: dict) -> None:
        """Nothing to do before round 1."""

    def on_round(self, record: dict) -> None:
        """Keep the central (test-set) accuracy of every finished round."""
        if record.get("initial") or record.get("central_accuracy") is None:
            return
        self.curve.append(float(record["central_accuracy"]))
        print(f"  {self.name} round {len(self.curve)}: test accuracy "
              f"{self.curve[-1]:.4f}", flush=True)

    def on_finish(self, final, info: dict) -> None:
        """Nothing to keep from the final state."""


def first_round_at(curve: list[float], target: float) -> int | None:
    """1-based round at which `curve` first reaches `target`, or None."""
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target), None)


def run_federated(exp: Experiment, started: PreparedRun) -> tuple[list[float], float]:
    """Simulate one prepared experiment; (accuracy per round, wall seconds)."""
    listener = CurveListener(exp.name)
    t0 = time.perf_counter()
    simulate(started.config, started=started, listener=listener)
    return listener.curve, time.perf_counter() - t0


def run_experiment(exp: Experiment, args: argparse.Namespace, out: Path,
                   central: dict[str, float]) -> dict:
    """Prepare, run the centralized reference once per dataset, then simulate."""
    cfg = make_config(exp, args, out)
    started = start_run(cfg)
    n_params = count_parameters(build_model(started.prepared.model))
    print(f"{exp.name}: {cfg.clients} clients, C={cfg.fraction}, E={cfg.local_epochs}, "
          f"B={cfg.batch_size}, lr={cfg.lr}, {cfg.rounds} rounds, model {cfg.model} "
          f"({n_params:,} parameters)", flush=True)
    if exp.dataset not in central:
        curve = centralized_curve(started, epochs=args.central_epochs, lr=cfg.lr,
                                  batch_size=cfg.batch_size, seed=cfg.seed)
        central[exp.dataset] = max(curve)
    fed_curve, wall = run_federated(exp, started)
    target = TARGET_SHARE * central[exp.dataset]
    return {
        "experiment": exp.name, "parameters": n_params, "rounds": cfg.rounds,
        "centralized_accuracy": central[exp.dataset], "target_accuracy": target,
        "rounds_to_target": first_round_at(fed_curve, target),
        "final_accuracy": fed_curve[-1] if fed_curve else None,
        "best_accuracy": max(fed_curve, default=None), "curve": fed_curve,
        "wall_s": wall,
    }


def report(results: list[dict]) -> None:
    """One line per experiment."""
    print("\nexperiment          params     central  target  rounds-to-target  "
          "final   rounds")
    for r in results:
        reached = r["rounds_to_target"] or f">{r['rounds']}"
        final = f"{r['final_accuracy']:.4f}" if r["final_accuracy"] is not None else "-"
        print(f"{r['experiment']:<18} {r['parameters']:>9,}  "
              f"{r['centralized_accuracy']:.4f}  {r['target_accuracy']:.4f}  "
              f"{reached!s:>16}  {final}  {r['rounds']}")


def main() -> None:
    args = parse_args()
    chosen = set(args.runs.split(","))
    unknown = chosen - {e.name for e in EXPERIMENTS}
    if unknown:
        raise SystemExit(f"unknown --runs {sorted(unknown)}; choose from "
                         f"{', '.join(e.name for e in EXPERIMENTS)}")
    central: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as tmp:
        results = [run_experiment(exp, args, Path(tmp), central)
                   for exp in EXPERIMENTS if exp.name in chosen]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
