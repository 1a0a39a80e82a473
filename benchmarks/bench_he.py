"""CKKS secure aggregation vs plaintext FedAvg: wire size, time, error.

For each model (the FedAvg MNIST CNN, 1,663,370 parameters, and the default digits
CNN, 188,810), each HE parameter set and each key mode (`tagged`: what fedsim runs,
symmetric keys plus the authentication tags, weight and presence slots of
`privacy.he_tag` for a federation of `--federation` clients; `symmetric`: the same
keys without tags; `public-key`: with a public key), a few clients encrypt
weight*update, the server (no secret key) deserializes and adds each update, and
the sum is decrypted (and, tagged, verified) and divided on the client side. A
second table prints the tags' cost: tagged over untagged bytes and times. The same updates are averaged in
plaintext (numpy, float64 weighted sum) in the same run. Times are medians over the
clients; the machine's cores may be shared, so compare rows of one run.

    python benchmarks/bench_he.py [--clients 3] [--sets default compact]
                                  [--models mnist digits]
                                  [--modes symmetric tagged public-key]
                                  [--federation 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedsim.fedmodels.models import FedAvgCNN
from fedsim.privacy import he, he_tag
from fedsim.server.aggregate import Accumulator, fedavg, weighted, weighted_average

MODELS = {"mnist": (1, 28, 28), "digits": (1, 8, 8)}
MODES = ("symmetric", "tagged", "public-key")  # untagged first: no warm-up in the ratio


@dataclass(frozen=True, kw_only=True)
class Row:
    model: str
    params: int
    scheme: str
    security: str
    vectors: int
    bytes_per_param: float
    vs_fp32: float
    mib_per_update: float
    encrypt_s: float
    aggregate_s: float
    decrypt_s: float
    max_err_f32: float
    max_err_f64: float


def model_arrays(shape: tuple[int, ...]) -> list[np.ndarray]:
    torch.manual_seed(0)
    model = FedAvgCNN(shape, 10)
    return [t.detach().numpy().copy() for t in model.state_dict().values()]


def client_updates(base, clients: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    updates = [
        [(a + rng.normal(0, 0.05, a.shape)).astype(np.float32) for a in base]
        for _ in range(clients)
    ]
    weights = rng.integers(100, 1001, size=clients).astype(float).tolist()
    return updates, weights


def run_he(name, params, mode, updates, weights, reference, federation: int = 100) -> Row:
    if mode == "tagged":
        return run_tagged(name, params, updates, weights, reference, federation)
    secret = he.create_context(params, symmetric=mode == "symmetric")
    server_bytes = he.public_context_bytes(secret)
    public = he.load_public_context(server_bytes)
    fp = he.fingerprint(server_bytes, b"benchmark key id")
    shapes = [a.shape for a in updates[0]]
    num = sum(a.size for a in updates[0])
    count = he.expected_vector_count(num, params)
    acc, enc, agg, size = Accumulator(), [], [], 0
    for update, weight in zip(updates, weights, strict=True):
        t0 = time.perf_counter()
        blobs = he.encrypt_update(secret, update, weight, fingerprint=fp)
        t1 = time.perf_counter()
        acc.add(he.load_ciphertexts(public, blobs, expected_count=count, fingerprint=fp),
                weight)
        agg.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
        size = sum(len(b) for b in blobs)
    summed = he.serialize_vectors(acc.total, fingerprint=fp)
    t0 = time.perf_counter()
    avg = he.decrypt_average(secret, summed, shapes=shapes, total_weight=acc.weight,
                             fingerprint=fp)
    dec = time.perf_counter() - t0
    vectors = he.load_ciphertexts(secret, summed, expected_count=count, fingerprint=fp)
    flat = np.concatenate([np.asarray(v.decrypt()) for v in vectors]) / acc.weight
    exact = np.concatenate([r.ravel() for r in reference["f64"]])
    return Row(
        model=name,
        params=num,
        scheme=f"{params.name} ({mode})",
        security=f"{params.security}-bit",
        vectors=count,
        bytes_per_param=size / num,
        vs_fp32=size / num / 4,
        mib_per_update=size / 2**20,
        encrypt_s=float(np.median(enc)),
        aggregate_s=float(np.median(agg)),
        decrypt_s=dec,
        max_err_f32=max_abs(avg, reference["f32"]),
        max_err_f64=float(np.max(np.abs(flat - exact))),
    )


def run_tagged(name, params, updates, weights, reference, federation: int) -> Row:
    """What fedsim sends: clipped, weighted, tagged, symmetric-key ciphertexts."""
    secret = he.create_context(params, symmetric=True)
    server_bytes = he.public_context_bytes(secret)
    public = he.load_public_context(server_bytes)
    fp = he.fingerprint(server_bytes, b"benchmark key id")
    tag_secret = he_tag.context_tag_secret(secret)
    shapes = [a.shape for a in updates[0]]
    num = sum(a.size for a in updates[0])
    layout = he_tag.Layout(num_params=num, num_clients=federation)
    binding = he_tag.Binding(run_id="bench", round=1, basis=bytes(32))
    count = he.expected_vector_count(layout.total, params)
    acc, enc, agg, size = Accumulator(), [], [], 0
    for cid, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        t0 = time.perf_counter()
        blobs, _ = he_tag.seal_contribution(secret, update, weight, cid, secret=tag_secret,
                                            binding=binding, layout=layout, fingerprint=fp)
        t1 = time.perf_counter()
        acc.add(he.load_ciphertexts(public, blobs, expected_count=count,
                                    num_params=layout.total, fingerprint=fp), weight)
        agg.append(time.perf_counter() - t1)
        enc.append(t1 - t0)
        size = sum(len(b) for b in blobs)
    summed = he.serialize_vectors(acc.total, fingerprint=fp)
    t0 = time.perf_counter()
    avg, _ = he_tag.open_global(secret, summed, shapes=shapes, secret=tag_secret,
                                binding=binding, layout=layout, announced_weight=acc.weight,
                                min_contributors=1, fingerprint=fp)
    dec = time.perf_counter() - t0
    decrypted = he.decrypt_flat(secret, summed, num_values=layout.total, fingerprint=fp)
    flat = he_tag.open_sum(decrypted, secret=tag_secret, binding=binding, layout=layout,
                           scale_bits=params.global_scale_bits,
                           capacity=params.max_abs_sum, announced_weight=acc.weight,
                           min_contributors=1).average
    exact = np.concatenate([r.ravel() for r in reference["f64"]])
    return Row(
        model=name, params=num, scheme=f"{params.name} (tagged)",
        security=f"{params.security}-bit", vectors=count, bytes_per_param=size / num,
        vs_fp32=size / num / 4, mib_per_update=size / 2**20,
        encrypt_s=float(np.median(enc)), aggregate_s=float(np.median(agg)), decrypt_s=dec,
        max_err_f32=max_abs(avg, reference["f32"]),
        max_err_f64=float(np.max(np.abs(flat - exact))),
    )  # fmt: skip


def tag_cost(rows: list[Row]) -> Table:
    """Tagged over untagged symmetric rows: the tags' byte and time ratios."""
    out = Table(title="Cost of the authentication tags (tagged / untagged, same keys)")
    for head in ("model", "set", "bytes", "encrypt", "server add", "decrypt+verify",
                 "tag slots"):
        out.add_column(head, justify="right")
    by_key = {(r.model, r.scheme): r for r in rows}
    for (model, scheme), tagged in by_key.items():
        if not scheme.endswith("(tagged)"):
            continue
        plain = by_key.get((model, scheme.replace("tagged", "symmetric")))
        if plain is None:
            continue
        out.add_row(model, scheme.split()[0],
                    f"{tagged.mib_per_update / plain.mib_per_update:.4f}",
                    f"{tagged.encrypt_s / plain.encrypt_s:.2f}",
                    f"{tagged.aggregate_s / plain.aggregate_s:.2f}",
                    f"{tagged.decrypt_s / plain.decrypt_s:.2f}",
                    f"+{tagged.vectors - plain.vectors} ciphertext(s)")
    return out


def max_abs(got, expected) -> float:
    return max(
        float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64))))
        for g, e in zip(got, expected, strict=True)
    )


def run_plain(name, updates, weights) -> tuple[Row, dict]:
    acc, agg = Accumulator(), []
    for update, weight in zip(updates, weights, strict=True):
        t0 = time.perf_counter()
        acc.add(weighted(update, weight), weight)
        agg.append(time.perf_counter() - t0)
    f64 = [t / acc.weight for t in acc.total]
    f32 = weighted_average(acc, [np.float32] * len(acc.total))
    num = sum(a.size for a in updates[0])
    row = Row(
        model=name, params=num, scheme="plaintext fp32", security="-", vectors=0,
        bytes_per_param=4.0, vs_fp32=1.0, mib_per_update=num * 4 / 2**20,
        encrypt_s=0.0, aggregate_s=float(np.median(agg)), decrypt_s=0.0,
        max_err_f32=max_abs(f32, fedavg(updates, weights)), max_err_f64=0.0,
    )  # fmt: skip
    return row, {"f32": f32, "f64": f64}


def table(rows: list[Row]) -> Table:
    out = Table(title="CKKS secure aggregation vs plaintext (per client update)")
    heads = ["model", "params", "scheme", "security", "ciphertexts", "B/param",
             "x fp32", "MiB/update", "encrypt s", "server add s", "decrypt s",
             "max err f32", "max err f64"]  # fmt: skip
    for head in heads:
        out.add_column(head, justify="right")
    for r in rows:
        out.add_row(
            r.model, f"{r.params:,}", r.scheme, r.security, str(r.vectors),
            f"{r.bytes_per_param:.2f}", f"{r.vs_fp32:.2f}", f"{r.mib_per_update:.1f}",
            f"{r.encrypt_s:.3f}", f"{r.aggregate_s:.4f}", f"{r.decrypt_s:.3f}",
            f"{r.max_err_f32:.2e}", f"{r.max_err_f64:.2e}",
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--sets", nargs="+", default=list(he.PARAMETER_SETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--federation", type=int, default=100,
                        help="clients in the federation (presence slots of a tagged update)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        updates, weights = client_updates(model_arrays(MODELS[name]), args.clients)
        plain, reference = run_plain(name, updates, weights)
        rows.append(plain)
        for set_name in args.sets:
            params = he.get_params(set_name)
            for mode in args.modes:
                rows.append(run_he(name, params, mode, updates, weights, reference,
                                   args.federation))
    Console(width=200).print(table(rows))
    Console(width=200).print(tag_cost(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(r) for r in rows], handle, indent=2)


if __name__ == "__main__":
    main()
