"""STOPGAP until real DP runs exist: turn a real run folder into a DP-looking one.

The run folder itself comes from a real (non-DP) simulation. This helper writes
what a DP run would add, for the history that run really had:

- which clients trained in which round: the server's own seeded sampling
  (`Federation.sample`, stream 0) replayed from config.json, for each round in
  metrics.jsonl;
- per participation: sample rate batch/n and steps epochs*ceil(n/batch) from
  partitions.json, and the cumulative epsilon from `opacus.accountants.RDPAccountant`
  over the client's whole history;
- a participation that would pass the budget is recorded as privacy/ledger.py
  says: its epsilon (noise applied) with `released: false` (update not used);
  that client is not sampled again;
- config.json gains the DP keys, metrics.jsonl gains eps_max, eps_median (over all
  clients, 0 for those never trained) and exhausted_clients.

Replace these fixtures with real `--dp` runs once the DP work lands.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

from opacus.accountants import RDPAccountant

from fedsim.server.federation import Federation
from fedsim.simulations.rundir import atomic_write_bytes, atomic_write_json


def _read(run_dir: Path, name: str):
    return json.loads((run_dir / name).read_text())


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def sampled_clients(run_dir: Path) -> dict[int, list[int]]:
    """Round -> the clients the server sampled for training in that real run."""
    config = _read(run_dir, "config.json")
    federation = Federation(nodes={c: c for c in range(config["clients"])},
                            seed=config["seed"])
    return {row["round"]: federation.sample(row["round"], config["fraction"], stream=0)
            for row in _metrics(run_dir)}


def _participation(config: dict, n_train: int) -> tuple[float, int]:
    """(sample rate, steps) of one round of local DP-SGD on `n_train` examples."""
    batch = config["batch_size"]
    return batch / n_train, config["local_epochs"] * math.ceil(n_train / batch)


def _record(rnd: int, cid: int, nm: float, q: float, steps: int, delta: float,
            eps: float, budget: float | None, released: bool) -> dict:
    return {"round": rnd, "client_id": cid, "noise_multiplier": nm, "sample_rate": q,
            "steps": steps, "delta": delta, "accountant": "rdp", "epsilon": eps,
            "budget": budget, "released": released}


def dp_ledger(run_dir: Path, *, noise_multiplier: float = 1.1, delta: float = 1e-5,
              budget: float | None = None) -> list[dict]:
    """The ledger records a DP version of this run would have written."""
    config = _read(run_dir, "config.json")
    parts = _read(run_dir, "partitions.json")["clients"]
    sizes = {int(k): v["train"] for k, v in parts.items()}
    accountants: dict[int, RDPAccountant] = {}
    exhausted: set[int] = set()
    records: list[dict] = []
    for rnd, clients in sorted(sampled_clients(run_dir).items()):
        for cid in clients:
            if cid in exhausted:
                continue
            q, steps = _participation(config, sizes[cid])
            trial = copy.deepcopy(accountants.get(cid, RDPAccountant()))
            for _ in range(steps):
                trial.step(noise_multiplier=noise_multiplier, sample_rate=q)
            eps = trial.get_epsilon(delta)
            released = budget is None or eps <= budget
            if not released:
                exhausted.add(cid)
            accountants[cid] = trial
            records.append(_record(rnd, cid, noise_multiplier, q, steps, delta, eps,
                                   budget, released))
    return records


def _add_eps_metrics(run_dir: Path, records: list[dict], clients: int) -> None:
    """Add eps_max, eps_median, exhausted_clients per round as the DP server does."""
    rows = _metrics(run_dir)
    for row in rows:
        eps = {c: 0.0 for c in range(clients)}
        out = set()
        for rec in records:
            if rec["round"] <= row["round"]:
                eps[rec["client_id"]] = rec["epsilon"]
                if not rec["released"]:
                    out.add(rec["client_id"])
        row |= {"eps_max": max(eps.values()),
                "eps_median": statistics.median(eps.values()),
                "exhausted_clients": len(out)}
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_bytes(run_dir / "metrics.jsonl", text.encode())


def make_dp_looking(run_dir: Path, *, noise_multiplier: float = 1.1,
                    delta: float = 1e-5, budget: float | None = None) -> list[dict]:
    """Write the ledger, DP config keys and eps metrics; return the ledger records."""
    run_dir = Path(run_dir)
    records = dp_ledger(run_dir, noise_multiplier=noise_multiplier, delta=delta,
                        budget=budget)
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write_bytes(run_dir / "privacy" / "ledger.jsonl", text.encode())
    config = _read(run_dir, "config.json")
    config |= {"dp": True, "noise_multiplier": noise_multiplier, "target_epsilon": None,
               "max_grad_norm": 1.0, "delta": delta, "accountant": "rdp",
               "epsilon_budget": budget, "secure_agg": "none", "he_params": "default"}
    atomic_write_json(run_dir / "config.json", config)
    _add_eps_metrics(run_dir, records, config["clients"])
    return records
