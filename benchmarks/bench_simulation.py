"""fedsim's simulation vs a minimal stock Flower `run_simulation`, same model and data.

Both sides train the same CNN with the same local loop on the same partitions
(100 clients of sklearn digits, C=0.1, E=1, B=10, 10 rounds); the baseline is Flower's
stock Message-API FedAvg with no handshake, checks, metrics or run folder.
Each side is timed over its whole `run_simulation` call (Ray start, actors, all
rounds, shutdown). Prints client-updates per second for each and the ratio.

    python benchmarks/bench_simulation.py [--clients 100 --rounds 5 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedsim.config import build_config
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.store import open_store
from fedsim.fedmodels.training import evaluate, seeded_generator, train_epochs
from fedsim.simulations.runner import backend_config, quiet_logs, simulate, start_run

stock_client = ClientApp()


def _stock_start(msg: Message, context: Context, split: str):
    """The run's spec, the received global model, this client's id and its split."""
    torch.set_num_threads(1)
    cfg = msg.content["config"]
    spec = json.loads(str(cfg["spec"]))
    model = build_model(ModelSpec.from_dict(spec["model"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    cid = int(context.node_config["partition-id"])
    x, y = open_store(str(cfg["data"])).client_data(cid, split)
    return spec, model, cid, x, y


@stock_client.train()
def stock_train(msg: Message, context: Context) -> Message:
    spec, model, cid, x, y = _stock_start(msg, context, "train")
    cfg = msg.content["config"]
    res = train_epochs(model, x, y, epochs=spec["local_epochs"], batch_size=spec["batch_size"],
                       lr=spec["lr"], device=torch.device("cpu"),
                       generator=seeded_generator(spec["seed"], int(cfg["server-round"]), cid))
    metrics = MetricRecord({"num-examples": res.num_examples, "train-loss": res.loss})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)


@stock_client.evaluate()
def stock_eval(msg: Message, context: Context) -> Message:
    _, model, _, x, y = _stock_start(msg, context, "val")
    loss, acc = evaluate(model, x, y, device=torch.device("cpu"))
    metrics = MetricRecord({"num-examples": len(y), "loss": loss, "acc": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def run_stock(cfg, started) -> float:
    spec = {"model": started.prepared.model.to_dict(), "local_epochs": cfg.local_epochs,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(cfg.seed)
        strategy = FedAvg(fraction_train=cfg.fraction, fraction_evaluate=cfg.fraction,
                          min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=cfg.clients)
        config = ConfigRecord({"spec": json.dumps(spec), "data": str(started.prepared.data_dir)})
        strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model(started.prepared.model).state_dict()),
                       num_rounds=cfg.rounds, train_config=config,
                       evaluate_config=ConfigRecord(dict(config)))

    t0 = time.perf_counter()
    run_simulation(server_app=server, client_app=stock_client, num_supernodes=cfg.clients,
                   backend_config=backend_config(cfg, verbose=False))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    quiet_logs(False)
    updates = max(1, round(0.1 * args.clients)) * args.rounds
    results = {"fedsim": [], "stock": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            cfg = build_config({"clients": args.clients, "rounds": args.rounds,
                                "local_epochs": args.local_epochs, "fraction": 0.1,
                                "out": str(Path(tmp) / f"fedsim{rep}")})
            started = start_run(cfg)
            stock_s = run_stock(cfg, started)
            t0 = time.perf_counter()
            simulate(cfg, started=started)
            fedsim_s = time.perf_counter() - t0
            results["stock"].append(updates / stock_s)
            results["fedsim"].append(updates / fedsim_s)
    best = {k: max(v) for k, v in results.items()}
    print(f"clients={args.clients} rounds={args.rounds} updates/run={updates}")
    print(f"stock Flower : {best['stock']:.2f} client-updates/s  (runs: "
          f"{', '.join(f'{v:.2f}' for v in results['stock'])})")
    print(f"fedsim       : {best['fedsim']:.2f} client-updates/s  (runs: "
          f"{', '.join(f'{v:.2f}' for v in results['fedsim'])})")
    print(f"ratio fedsim/stock: {best['fedsim'] / best['stock']:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
