"""Scale on one machine: peak server RSS and client-updates/s at 100, 300 and 1000 clients.

Each configuration runs as its own `fedsim run` process (so peak RSS is that run's),
with C=0.1 (10, 30 and 100 clients sampled per round), one local epoch, on the
embedded mnist-5k (4,000 training images; the 1.66M-parameter CNN), plaintext and
with DP-SGD + CKKS (compact parameters). Prints a table and the growth of the
server's peak RSS per additional sampled client, which should be flat: replies are
summed as they arrive and dropped (streaming aggregation), and client data is
memory-mapped from the run folder, not copied per Ray worker.

    python benchmarks/bench_scale.py [--clients 100 300 1000] [--rounds 2] [--modes plain dp+he]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "plain": [],
    "dp+he": ["--dp", "--noise-multiplier", "1.0", "--secure-agg", "he",
              "--he-params", "compact"],
}


def run_one(clients: int, mode: str, rounds: int, dataset: str, folder: Path) -> dict:
    out = folder / f"{mode}-{clients}"
    cmd = [sys.executable, "-m", "fedsim", "run", "--clients", str(clients),
           "--fraction", "0.1", "--rounds", str(rounds), "--local-epochs", "1",
           "--dataset", dataset, "--model", "cnn", "--out", str(out), *MODES[mode]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {clients} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"clients": clients, "mode": mode, "sampled": max(1, round(0.1 * clients)),
            "wall_s": wall, "updates_per_s": summary["client_updates_per_s"],
            "peak_rss_mb": summary["driver_peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for clients in args.clients:
                results.append(run_one(clients, mode, args.rounds, args.dataset, Path(tmp)))
                r = results[-1]
                print(f"{mode:6s} clients={clients:5d} sampled/round={r['sampled']:4d} "
                      f"updates/s={r['updates_per_s']:.2f} server peak RSS="
                      f"{r['peak_rss_mb']:.0f} MiB wall={r['wall_s']:.0f}s", flush=True)
    for mode in args.modes:
        rows = [r for r in results if r["mode"] == mode]
        if len(rows) >= 2:
            first, last = rows[0], rows[-1]
            slope = ((last["peak_rss_mb"] - first["peak_rss_mb"])
                     / max(1, last["sampled"] - first["sampled"]))
            print(f"{mode}: server peak RSS grows {slope:.2f} MiB per additional sampled "
                  f"client ({first['sampled']} -> {last['sampled']} sampled per round)")


if __name__ == "__main__":
    main()
