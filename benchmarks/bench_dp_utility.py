"""Privacy/utility on digits: central test accuracy at epsilon about 1, 3 and 8 vs none.

10 clients (about 130 training images each), every client every round (C=1), 20
rounds, E=1, B=32, lr 0.2, clip 1.0, delta = min(1e-5, 0.1/n); the noise multiplier is
calibrated per client with `--target-epsilon` for the 20 participations, so each
client ends at the target. Sample-level DP per client: with ~130 examples a client,
DP-SGD has little data to hide each example in, so this is a hard regime.

    python benchmarks/bench_dp_utility.py [--rounds 20] [--targets 1 3 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fedsim.config import build_config
from fedsim.simulations.runner import simulate

BASE = {"clients": 10, "fraction": 1.0, "local_epochs": 1, "batch_size": 32, "lr": 0.2,
        "max_grad_norm": 1.0, "model": "cnn", "seed": 42}  # the FedAvg CNN, DP or not


def run(rounds: int, target: float | None, folder: Path) -> dict:
    extra = {"dp": True, "target_epsilon": target} if target else {}
    cfg = build_config({**BASE, "rounds": rounds, **extra,
                        "out": str(folder / f"eps-{target or 'none'}")})
    outcome = simulate(cfg)
    rows = [json.loads(x) for x in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"target": target, "final_acc": rows[-1]["central_accuracy"],
            "best_acc": max(r["central_accuracy"] for r in rows),
            "eps_max": rows[-1].get("eps_max")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--targets", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for target in [None, *args.targets]:
            r = run(args.rounds, target, Path(tmp))
            eps = "non-private" if r["eps_max"] is None else f"eps_max {r['eps_max']:.2f}"
            print(f"target {target or '-':>4}: {eps:18s} final acc {r['final_acc']:.3f} "
                  f"best {r['best_acc']:.3f}", flush=True)


if __name__ == "__main__":
    main()
