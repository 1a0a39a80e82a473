"""Secure aggregation attacked as a malicious server (and a malicious client) would.

The server holds server.ctx (parameters, no key), every ciphertext it was sent and
the run's messages; a malicious client holds the key set but plays by its own
rules. Each test plays one of them with real TenSEAL, the real server codec and
strategy, and the real client steps, and asserts the attack is refused.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import tenseal as ts
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from fedsim import protocol
from fedsim.client import he_step
from fedsim.fedmodels.models import ModelSpec, build_model, register, unregister
from fedsim.privacy import he, he_tag, keys
from fedsim.server.aggregate import Accumulator
from fedsim.server.federation import Federation
from fedsim.server.he_codec import HECodec
from fedsim.server.strategies.fedavg import FedsimFedAvg
from fedsim.settings import ClientSettings, HESettings
from tests.attacks import wire

PASS = "attack test passphrase"
SPEC = ModelSpec(name="attack-linear", input_shape=(1, 8, 8), num_classes=10)
SEED = 5
CLIENTS = 4
RUN = "sim-attacks"
WEIGHTS = {0: 10.0, 1: 20.0, 2: 30.0}


@pytest.fixture(scope="module", autouse=True)
def attack_model():
    """A 650-parameter linear model (one compact ciphertext), registered for this module only.

    Registered in a fixture, not at import: the registry is global and other tests
    enumerate every registered model.
    """
    register("attack-linear", "a 650-parameter linear model (one compact ciphertext)",
             lambda spec: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    yield
    unregister("attack-linear")


def initial_state() -> OrderedDict:
    torch.manual_seed(SEED)
    return build_model(SPEC).state_dict()


def n_params() -> int:
    return sum(t.numel() for t in initial_state().values())


@pytest.fixture(scope="module", autouse=True)
def task_identity():
    """Flower's Message needs the identity of a running task."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


@pytest.fixture(scope="module")
def keyset(tmp_path_factory):
    """A provisioned compact key set: the clients' keys and the server's context."""
    folder = tmp_path_factory.mktemp("he")
    made = keys.provision(folder, params=he.PARAMETER_SETS["compact"], passphrase=PASS,
                          kdf=keys.ScryptParams(log2_n=14))
    client = keys.load_client_keys(made.client_key_path, PASS)
    server, params = keys.load_server_context(made.server_context_path)
    layout = he_tag.Layout(num_params=n_params(), num_clients=CLIENTS)
    return SimpleNamespace(client=client, server=server, params=params, fp=made.fingerprint,
                           layout=layout, folder=folder)


def session(ks, **changes) -> he_step.Session:
    fields = {"keys": ks.client, "run_id": RUN, "layout_clients": CLIENTS,
              "min_contributors": 2} | changes
    return he_step.Session(**fields)


def codec(ks) -> HECodec:
    return HECodec(public_context=ks.server, fingerprint=ks.fp, layout=ks.layout,
                   params_name="compact",
                   initial_basis=he_tag.initial_basis(SPEC.to_dict(), SEED))


def train_reply(ks, cid: int, server_round: int, sess: he_step.Session,
                shift: float = 0.0) -> Message:
    """Client `cid`'s real encrypted reply: the global it opened, moved a little."""
    model = build_model(SPEC)
    state = initial_state()
    model.load_state_dict(OrderedDict((k, v + shift + 0.01 * (cid + 1))
                                      for k, v in state.items()))
    arrays, config = he_step.encrypted_reply(model, WEIGHTS.get(cid, 5.0), sess,
                                             client_id=cid, server_round=server_round)
    content = RecordDict({protocol.ARRAYS: arrays, protocol.HE_CONFIG: config,
                          protocol.METRICS: MetricRecord({
                              protocol.CLIENT_ID: cid,
                              protocol.NUM_EXAMPLES: WEIGHTS.get(cid, 5.0),
                              protocol.TRAIN_LOSS: 1.0})})
    return as_reply(content, node=100 + cid)


def as_reply(content: RecordDict, node: int = 100) -> Message:
    ask = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(content, reply_to=ask)


def open_global(ks, record: ArrayRecord, server_round: int, stage: str = "train",
                **changes) -> OrderedDict:
    """What a client does with a global: verify, decrypt (raises TagError if refused)."""
    he_step._DECRYPTED.clear()
    return he_step.global_state(record, build_model(SPEC), session(ks, **changes),
                                spec=SPEC, seed=SEED, server_round=server_round, stage=stage)


def plain_initial() -> ArrayRecord:
    return ArrayRecord(initial_state())


def honest_round(ks, cids=(0, 1, 2), server_round: int = 1, global_record=None):
    """One real round: clients open the global, reply; the real codec sums them."""
    global_record = plain_initial() if global_record is None else global_record
    server = codec(ks)
    server.start_round(server_round, global_record)
    acc = Accumulator()
    replies = []
    for cid in cids:
        sess = session(ks)
        he_step.global_state(global_record, build_model(SPEC), sess, spec=SPEC, seed=SEED,
                             server_round=server_round, stage="train")
        reply = train_reply(ks, cid, server_round, sess)
        replies.append(reply)
        acc.add(server.contribution(reply, global_record, WEIGHTS[cid]), WEIGHTS[cid])
    return server.finish(acc, global_record), replies


@pytest.fixture(scope="module")
def round1(keyset):
    """The honest sum of round 1 (clients 0, 1, 2) and the replies it was made of."""
    record, replies = honest_round(keyset)
    return SimpleNamespace(record=record, replies=replies)


def with_blobs(record: ArrayRecord, blobs: list[bytes], **meta) -> ArrayRecord:
    """A copy of a global with other ciphertexts and/or metadata."""
    total, sum_round, basis = protocol.sum_metadata(record)
    return protocol.encrypted_record(
        blobs, meta.get("total", total), sum_round=meta.get("sum_round", sum_round),
        basis=meta.get("basis", basis))


def vectors_of(ks, record: ArrayRecord) -> list[ts.CKKSVector]:
    return he.load_ciphertexts(ks.server, protocol.ciphertext_blobs(record),
                               expected_count=-(-ks.layout.total // 2048),
                               num_params=ks.layout.total, fingerprint=ks.fp)


# --- the honest path --------------------------------------------------------------


def test_honest_sum_is_accepted_and_averages(keyset, round1):
    state = open_global(keyset, round1.record, server_round=2)
    init = initial_state()
    total = sum(WEIGHTS.values())
    moved = sum(WEIGHTS[c] * 0.01 * (c + 1) for c in WEIGHTS) / total
    for key, value in state.items():
        assert torch.allclose(value, init[key] + moved, atol=1e-5)


# --- forged and steered globals ----------------------------------------------------


def test_attack_forged_global_from_server_ctx_alone_is_refused(keyset, round1):
    # The server encodes a model of its choice as c0 = NTT(scale*m), c1 = NTT(1).
    layout = keyset.layout
    chosen = np.full(layout.total, 0.5)
    forged = [wire.frame(wire.forge_payload(keyset.server, chosen[i : i + 2048].tolist()),
                         keyset.fp) for i in range(0, layout.total, 2048)]
    # It is a real forgery: it decrypts to the chosen values ...
    got = he.decrypt_flat(keyset.client.context, forged, num_values=layout.total,
                          fingerprint=keyset.fp)
    assert np.max(np.abs(got - chosen)) < 1e-6
    # ... and the client refuses it.
    with pytest.raises(he_tag.TagError, match="tag check"):
        open_global(keyset, with_blobs(round1.record, forged), server_round=2)


def test_attack_plaintext_shift_is_refused(keyset, round1):
    vectors = vectors_of(keyset, round1.record)
    shift = [0.0] * vectors[0].size()
    shift[0] = 125.0
    shifted = [vectors[0] + shift, *vectors[1:]]
    record = with_blobs(round1.record, he.serialize_vectors(shifted, fingerprint=keyset.fp))
    with pytest.raises(he_tag.TagError, match="tag check"):
        open_global(keyset, record, server_round=2)


@pytest.mark.parametrize("factor", [2, -1])
def test_attack_scaled_or_negated_sum_is_refused(keyset, round1, factor):
    # Integer scaling by repeated doubling (or negation), total weight scaled alike,
    # so that the average would be unchanged: the presence marks give it away.
    vectors = vectors_of(keyset, round1.record)
    scaled = [v + v if factor == 2 else -v for v in vectors]
    total, _, _ = protocol.sum_metadata(round1.record)
    record = with_blobs(round1.record, he.serialize_vectors(scaled, fingerprint=keyset.fp),
                        total=total * factor)
    with pytest.raises(he_tag.TagError, match="presence|total weight"):
        open_global(keyset, record, server_round=2)


def test_attack_wrong_total_weight_is_refused(keyset, round1):
    total, _, _ = protocol.sum_metadata(round1.record)
    record = with_blobs(round1.record, protocol.ciphertext_blobs(round1.record),
                        total=total / 100)
    with pytest.raises(he_tag.TagError, match="announced total weight"):
        open_global(keyset, record, server_round=2)


def test_attack_replay_of_round_r_minus_1_in_round_r_is_refused(keyset, round1):
    # Round 2's honest sum exists; in round 3 the server sends round 1's sum again,
    # as it is and relabelled as round 2's.
    round2, _ = honest_round(keyset, server_round=2, global_record=round1.record)
    open_global(keyset, round2, server_round=3)  # the honest global of round 3
    with pytest.raises(he_tag.TagError, match="sums round 1, expected round 2"):
        open_global(keyset, round1.record, server_round=3)
    relabelled = with_blobs(round1.record, protocol.ciphertext_blobs(round1.record),
                            sum_round=2)
    with pytest.raises(he_tag.TagError, match="tag check"):
        open_global(keyset, relabelled, server_round=3)


def test_attack_replayed_training_round_is_refused(keyset):
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={})
    he_step.claim_round(context, 2)
    with pytest.raises(he_tag.TagError, match="once per round"):
        he_step.claim_round(context, 2)
    with pytest.raises(he_tag.TagError, match="once per round"):
        he_step.claim_round(context, 1)


def test_attack_plaintext_global_in_an_he_run_is_refused(keyset):
    crafted = ArrayRecord(OrderedDict((k, v * 0 + 3.0) for k, v in initial_state().items()))
    with pytest.raises(he_tag.TagError, match="plaintext global in round 2"):
        open_global(keyset, plain_initial(), server_round=2)
    with pytest.raises(he_tag.TagError, match="plaintext global in round 1"):
        open_global(keyset, plain_initial(), server_round=1, stage="evaluate")
    with pytest.raises(he_tag.TagError, match="not the seeded initial model"):
        open_global(keyset, crafted, server_round=1)


def test_attack_per_client_divergent_global_cannot_be_summed(keyset, round1):
    # The server sends client 0 the honest sum and client 1 a different genuine one
    # (clients 0 and 2 only); each passes alone, but their contributions never
    # add up to a global anyone accepts.
    other, _ = honest_round(keyset, cids=(0, 2))
    replies = []
    for cid, record in ((0, round1.record), (1, other)):
        sess = session(keyset)
        he_step.global_state(record, build_model(SPEC), sess, spec=SPEC, seed=SEED,
                             server_round=2, stage="train")
        replies.append(train_reply(keyset, cid, 2, sess))
    acc = Accumulator()
    for cid, reply in enumerate(replies):
        blobs = protocol.ciphertext_blobs(reply.content[protocol.ARRAYS])
        acc.add(he.load_ciphertexts(keyset.server, blobs, expected_count=len(blobs),
                                    fingerprint=keyset.fp), WEIGHTS[cid])
    mixed = protocol.encrypted_record(
        he.serialize_vectors(acc.total, fingerprint=keyset.fp), acc.weight, sum_round=2,
        basis=he_tag.global_basis(protocol.ciphertext_blobs(round1.record),
                                  list(protocol.sum_metadata(round1.record))))
    with pytest.raises(he_tag.TagError, match="tag check"):
        open_global(keyset, mixed, server_round=3)
    # The honest codec already refuses the second one: tagged on another global.
    server = codec(keyset)
    server.start_round(2, round1.record)
    with pytest.raises(Exception, match="tagged for round 2 on global"):
        server.contribution(replies[1], round1.record, WEIGHTS[1])


def test_attack_single_clients_own_ciphertext_as_the_sum_is_refused(keyset, round1):
    # Client 0's own reply, sent to the others as "the sum" with its own weight.
    reply = round1.replies[0]
    blobs = protocol.ciphertext_blobs(reply.content[protocol.ARRAYS])
    record = with_blobs(round1.record, blobs, total=WEIGHTS[0])
    with pytest.raises(he_tag.TagError, match="1 distinct contribution"):
        open_global(keyset, record, server_round=2)
    doubled = he.load_ciphertexts(keyset.server, blobs, expected_count=len(blobs),
                                  fingerprint=keyset.fp)
    twice = with_blobs(record, he.serialize_vectors([v + v for v in doubled],
                                                    fingerprint=keyset.fp),
                       total=2 * WEIGHTS[0])
    with pytest.raises(he_tag.TagError, match="presence"):
        open_global(keyset, twice, server_round=2)


def test_attack_tag_soundness_bound_is_overwhelming(keyset):
    # The analytic bound behind the tags, for this run and for the 188,810-parameter
    # CNN of the digits runs: a change of 4 (compact) or 0.5 (default) in any slot of
    # the sum passes every tag with probability below 2^-128.
    for n in (keyset.layout.num_params, 188_810):
        layout = he_tag.Layout(num_params=n, num_clients=100)
        assert he_tag.forgery_bound(layout, 33, delta=4.0) < -128
        assert he_tag.forgery_bound(layout, 40, delta=0.5) < -128


# --- one reply never ends a round --------------------------------------------------


def strategy_for(ks, server_round: int = 1) -> FedsimFedAvg:
    """The real FedAvg strategy with the real HE codec, at the start of a round."""
    nodes = {cid: 100 + cid for cid in range(CLIENTS)}
    strategy = FedsimFedAvg(federation=Federation(nodes=nodes, seed=1), fraction=1.0,
                            fraction_evaluate=1.0, codec=codec(ks))
    strategy._global = plain_initial()
    strategy.codec.start_round(server_round, strategy._global)
    strategy.stats.round, strategy.stats.clients_sampled = server_round, CLIENTS
    return strategy


def replace_blob(reply: Message, blob: bytes, *, cid: int = 3) -> Message:
    """Client `cid` sends `blob` as its (only) ciphertext, all else as an honest reply."""
    content = reply.content
    arrays = ArrayRecord({protocol.ciphertext_key(0): Array(np.frombuffer(blob, np.uint8))})
    metrics = MetricRecord({protocol.CLIENT_ID: cid, protocol.NUM_EXAMPLES: 5.0})
    return as_reply(RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics,
                                protocol.HE_CONFIG: content[protocol.HE_CONFIG]}),
                    node=100 + cid)


def honest_blob(reply: Message) -> bytes:
    return protocol.ciphertext_blobs(reply.content[protocol.ARRAYS])[0]


def ntt_cleared(blob: bytes, fp: str) -> bytes:
    payload = wire.payload_of(blob)
    members = bytearray(wire.inflate(payload))
    members[32] = 0  # the NTT-form flag
    return wire.frame(wire.with_members(payload, bytes(members)), fp)


def run_round(strategy: FedsimFedAvg, replies) -> tuple[ArrayRecord | None, int]:
    record, _ = strategy.aggregate_train(1, replies)
    return record, strategy.stats.rejected


def test_attack_ntt_flag_reply_is_rejected_and_round_goes_on(keyset, round1, caplog):
    caplog.set_level("WARNING", logger="fedsim")
    strategy = strategy_for(keyset)
    bad = replace_blob(round1.replies[0], ntt_cleared(honest_blob(round1.replies[0]),
                                                      keyset.fp))
    record, rejected = run_round(strategy, [round1.replies[0], bad, *round1.replies[1:]])
    assert rejected == 1 and strategy.stats.clients_replied == 3
    assert "NTT-form flag is 0" in caplog.text
    assert open_global(keyset, record, server_round=2)  # the honest sum still verifies


def test_attack_oversized_frame_and_field_are_rejected_unread(keyset, round1, caplog):
    caplog.set_level("WARNING", logger="fedsim")
    blob = honest_blob(round1.replies[0])
    payload = wire.payload_of(blob)
    huge = wire.frame(payload + wire.proto_field(99, bytes(20 << 20)), keyset.fp)
    small = wire.frame(payload + wire.proto_field(99, b"x" * 100), keyset.fp)
    strategy = strategy_for(keyset)
    record, rejected = run_round(strategy, [*round1.replies, replace_blob(round1.replies[0],
                                            huge), replace_blob(round1.replies[0], small)])
    assert rejected == 2 and strategy.stats.clients_replied == 3
    assert "above the" in caplog.text and "unexpected protobuf field 99" in caplog.text


@pytest.mark.parametrize("bomb", ["streamed", "declared", "trailing"])
def test_attack_zstd_bomb_is_rejected_without_inflating(keyset, round1, caplog, bomb):
    caplog.set_level("WARNING", logger="fedsim")
    payload = wire.payload_of(honest_blob(round1.replies[0]))
    _, seal, _ = wire.split_proto(payload)
    body = {"streamed": lambda: wire.zstd_bomb(256),
            "declared": lambda: wire.zstd_bomb(0, declare=1 << 28),
            "trailing": lambda: seal[16:] + wire.zstd_bomb(16)}[bomb]()
    assert len(body) < 200_000
    blob = wire.frame(wire.with_seal(payload, wire.seal_object(body)), keyset.fp)
    strategy = strategy_for(keyset)
    _, rejected = run_round(strategy, [*round1.replies, replace_blob(round1.replies[0], blob)])
    assert rejected == 1 and strategy.stats.clients_replied == 3
    assert "zstd" in caplog.text


def test_attack_any_exception_while_adding_rejects_only_that_reply(keyset, round1, caplog):
    caplog.set_level("WARNING", logger="fedsim")
    strategy = strategy_for(keyset)
    real = strategy.codec.contribution

    def flaky(msg, global_arrays, weight):
        if msg.content[protocol.METRICS][protocol.CLIENT_ID] == 1:
            raise RuntimeError("TenSEAL blew up")
        return real(msg, global_arrays, weight)

    strategy.codec.contribution = flaky
    _, rejected = run_round(strategy, round1.replies)
    assert rejected == 1 and strategy.stats.clients_replied == 2
    assert "client 1" in caplog.text and "RuntimeError: TenSEAL blew up" in caplog.text


def _mutants(blob: bytes, fp: str, count: int, rng: np.random.Generator):
    """(kind, bytes) of many broken ciphertexts; 'flip' ones may still parse."""
    payload = wire.payload_of(blob)
    members = wire.inflate(payload)
    _, seal, _ = wire.split_proto(payload)
    bomb = wire.zstd_bomb(64)
    fixed = {
        "ntt": ntt_cleared(blob, fp),
        "parms": wire.frame(wire.with_members(payload, bytes(8) + members[8:]), fp),
        "size3": wire.frame(wire.with_members(
            payload, members[:33] + (3).to_bytes(8, "little") + members[41:]), fp),
        "scale": wire.frame(wire.with_members(
            payload, members[:57] + bytes(8) + members[65:]), fp),
        "field": wire.frame(payload + wire.proto_field(7, b"\x00" * 64), fp),
        "bomb": wire.frame(wire.with_seal(payload, wire.seal_object(bomb)), fp),
        "trail": wire.frame(wire.with_seal(payload, wire.seal_object(seal[16:] + b"\0")), fp),
        "raw": wire.frame(wire.with_seal(payload, wire.seal_object(members[:-8], 0)), fp),
    }
    kinds = [*fixed, "cut", "cut-reframed", "flip", "flip-reframed", "garbage"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind in fixed:
            yield kind, fixed[kind]
        elif kind == "cut":
            yield kind, blob[: int(rng.integers(0, len(blob)))]
        elif kind == "cut-reframed":
            yield kind, wire.frame(payload[: int(rng.integers(0, len(payload)))], fp)
        elif kind == "garbage":
            yield kind, rng.integers(0, 256, int(rng.integers(1, 2000)), np.uint8).tobytes()
        else:
            at = int(rng.integers(0, len(payload if kind == "flip-reframed" else blob)))
            data = bytearray(payload if kind == "flip-reframed" else blob)
            data[at] ^= 1 << int(rng.integers(0, 8))
            yield kind, wire.frame(bytes(data), fp) if kind == "flip-reframed" else bytes(data)


def test_attack_fuzzed_replies_never_end_the_round(keyset, round1):
    # 1500 mutated replies from client 3 among the honest ones, through the real
    # strategy: each is rejected with a reason or (a re-framed bit flip deep in the
    # coefficients) added; nothing escapes aggregate_train.
    rng = np.random.default_rng(13)
    blob = honest_blob(round1.replies[0])
    kinds: list[str] = []

    def replies():
        yield from round1.replies
        for kind, mutant in _mutants(blob, keyset.fp, 1500, rng):
            kinds.append(kind)
            yield replace_blob(round1.replies[0], mutant)

    strategy = strategy_for(keyset)
    record, rejected = run_round(strategy, replies())
    accepted = strategy.stats.clients_replied - 3
    assert len(kinds) == 1500 and rejected + accepted == 1500
    assert accepted <= kinds.count("flip-reframed")  # only those may parse
    assert record is not None and protocol.is_encrypted(record)
    if accepted:  # a malicious client's parsable garbage: the clients refuse the sum
        with pytest.raises(he_tag.TagError):
            open_global(keyset, record, server_round=2)


# --- sites trust only their own configuration ---------------------------------------


def _in_thread(fn, timeout: float = 20.0):
    """Run `fn` with a deadline: a FIFO opened for reading would block forever."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except Exception as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "the client hung on a path the server sent"
    return box


@pytest.fixture
def hostile_paths(tmp_path, monkeypatch):
    """A FIFO and /dev/zero, and a record of every path os.open is asked for."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    he_step._load.cache_clear()
    yield SimpleNamespace(fifo=str(fifo), zero="/dev/zero", opened=opened)
    he_step._load.cache_clear()


def _context(**node_config) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, **node_config},
                   state=RecordDict(), run_config={})


def test_attack_server_sent_key_paths_are_never_opened_by_a_site(
        keyset, hostile_paths, monkeypatch, tmp_path):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASS)
    site_key = str(keyset.folder / "client.key")
    sent = HESettings(key_path=hostile_paths.zero, passphrase_file=hostile_paths.fifo,
                      fingerprint=keyset.fp, run_id=RUN, clients=CLIENTS)
    node = {"he-key": site_key, "site-journal": str(tmp_path / "journal.jsonl")}
    box = _in_thread(lambda: he_step.session_for(sent, _context(**node), "/srv/data"))
    assert "error" not in box, box.get("error")
    assert box["value"].keys.fingerprint == keyset.fp
    assert hostile_paths.zero not in hostile_paths.opened
    assert hostile_paths.fifo not in hostile_paths.opened
    assert site_key in hostile_paths.opened


@pytest.mark.parametrize("which", ["zero", "fifo"])
def test_attack_simulation_refuses_paths_outside_its_run_folder(
        keyset, hostile_paths, tmp_path, which):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    target = getattr(hostile_paths, which)
    sent = HESettings(key_path=target, passphrase_file=target, fingerprint=keyset.fp,
                      run_id=RUN, clients=CLIENTS)
    box = _in_thread(lambda: he_step.session_for(sent, _context(), str(run / "data")))
    assert isinstance(box.get("error"), he_step.SiteKeyError)
    assert "refused unopened" in str(box["error"])
    assert target not in hostile_paths.opened


def test_attack_fifo_inside_the_run_folder_cannot_hang_the_client(keyset, tmp_path,
                                                                  hostile_paths, caplog):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "he").mkdir(mode=0o700)
    os.chmod(run / "he", 0o700)
    (run / "he" / "client.key").write_bytes((keyset.folder / "client.key").read_bytes())
    os.mkfifo(run / "he" / "passphrase")
    sent = HESettings(key_path=str(run / "he" / "client.key"),
                      passphrase_file=str(run / "he" / "passphrase"), fingerprint=keyset.fp,
                      run_id=RUN, clients=CLIENTS)
    box = _in_thread(lambda: he_step.session_for(sent, _context(), str(run / "data")))
    assert isinstance(box.get("error"), he_step.SiteKeyError)
    assert "details in the site's log" in str(box["error"])  # nothing for the server
    assert "not a regular file" in caplog.text


def test_attack_wrong_fingerprint_is_refused_before_decryption(keyset, monkeypatch):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASS)
    he_step._load.cache_clear()
    site_key = str(keyset.folder / "client.key")
    sent = HESettings(fingerprint="0" * 64, run_id=RUN, clients=CLIENTS)
    with pytest.raises(he_step.SiteKeyError, match="nothing was decrypted"):
        he_step.session_for(sent, _context(**{"he-key": site_key}), None)
    # A site that pins its key set refuses a key file of another set.
    pinned = _context(**{"he-key": site_key, "he-fingerprint": "ab" * 32})
    with pytest.raises(he_step.SiteKeyError, match="KeyFileError"):
        he_step.session_for(replace(sent, fingerprint=keyset.fp), pinned, None)
    he_step._load.cache_clear()


# --- capacity ---------------------------------------------------------------------------


def _capacity_round(ks, clients: int, weight: float, value: float):
    """`clients` honest contributions of `value` everywhere, through the real codec."""
    layout = he_tag.Layout(num_params=10, num_clients=clients)
    basis = he_tag.initial_basis(SPEC.to_dict(), SEED)
    server = HECodec(public_context=ks.server, fingerprint=ks.fp, layout=layout,
                     params_name="compact", initial_basis=basis)
    server.start_round(1, plain_initial())
    binding = he_tag.Binding(run_id=RUN, round=1, basis=basis)
    acc, every, refusals = Accumulator(), [], []
    for cid in range(clients):
        blobs, clipped = he_tag.seal_contribution(
            ks.client.context, [np.full(10, value)], weight, cid,
            secret=ks.client.tag_secret, binding=binding, layout=layout, fingerprint=ks.fp)
        assert clipped == (10 if abs(value) > he_tag.CLIP_BOUND else 0)
        reply = as_reply(RecordDict({
            protocol.ARRAYS: protocol.encrypted_record(blobs, None),
            protocol.HE_CONFIG: ConfigRecord({protocol.HE_FINGERPRINT: ks.fp,
                                              protocol.HE_ROUND: 1,
                                              protocol.HE_BASIS: basis.hex()})}))
        vectors = he.load_ciphertexts(ks.server, blobs, expected_count=1, fingerprint=ks.fp)
        every.append(vectors)
        try:
            acc.add(server.contribution(reply, plain_initial(), weight), weight)
        except Exception as err:  # noqa: BLE001 - the codec's Rejected
            refusals.append(str(err))
    return SimpleNamespace(layout=layout, binding=binding, acc=acc, every=every,
                           refusals=refusals)


def _open_capacity(ks, outcome, vectors, weight: float):
    blobs = he.serialize_vectors(vectors, fingerprint=ks.fp)
    return he_tag.open_global(ks.client.context, blobs, shapes=[(10,)],
                              secret=ks.client.tag_secret, binding=outcome.binding,
                              layout=outcome.layout, announced_weight=weight,
                              min_contributors=2, fingerprint=ks.fp)


def test_attack_capacity_100_clients_weight_1000_value_45_no_longer_wraps(keyset):
    # Unclipped, the compact sum reaches 4.5e6 > 2^22 and clients decrypted -38.9.
    outcome = _capacity_round(keyset, clients=100, weight=1000.0, value=45.0)
    assert outcome.refusals == []
    arrays, opened = _open_capacity(keyset, outcome, outcome.acc.total, outcome.acc.weight)
    assert np.allclose(arrays[0], he_tag.CLIP_BOUND, atol=1e-5)  # clipped, stated, no wrap
    assert len(opened.contributors) == 100


def test_attack_capacity_overflowing_round_is_refused(keyset):
    # 30 x 10000 examples x bound 16 = 4.8e6 > 2^22: the codec stops admitting replies
    # at the capacity and names the set that holds them; a server that adds every
    # ciphertext anyway gets a global the clients refuse.
    outcome = _capacity_round(keyset, clients=30, weight=10000.0, value=1.0)
    assert len(outcome.refusals) == 4  # 26 x 10000 x 16 = 4.16e6 still fits
    assert "exceeds the 'compact' set's capacity" in outcome.refusals[0]
    assert "--params default" in outcome.refusals[0]
    forced = [sum(parts[1:], parts[0]) for parts in zip(*outcome.every, strict=True)]
    with pytest.raises(he_tag.TagError):
        _open_capacity(keyset, outcome, forced, 30 * 10000.0)


def test_attack_huge_announced_federation_is_refused(keyset, monkeypatch):
    # A layout of 10^9 presence slots would take the client 8 GB per vector.
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASS)
    he_step._load.cache_clear()
    sent = HESettings(fingerprint=keyset.fp, run_id=RUN, clients=10**9)
    node = _context(**{"he-key": str(keyset.folder / "client.key")})
    with pytest.raises(he_step.SiteKeyError, match="at most 100000"):
        he_step.session_for(sent, node, None)
    with pytest.raises(he.EncodingError, match="at most 100000"):
        he_tag.Layout(num_params=10, num_clients=10**9)
    he_step._load.cache_clear()


# --- the site as the server reaches it: refusals, the journal, fail closed ----------


@pytest.fixture
def site(keyset, tmp_path):
    """Deployment-style sites (own key, passphrase file, journal) behind the real guard."""
    from fedsim.client import app as client_app
    from fedsim.client.local_data import train_size
    from fedsim.client.policy import make_site_guard

    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASS)
    he_step._load.cache_clear()
    guard = make_site_guard(train_size)

    def node(cid: int) -> dict:
        return {"partition-id": cid, "he-key": str(keyset.folder / "client.key"),
                "he-passphrase-file": str(passphrase),
                "site-journal": str(tmp_path / f"journal-{cid}.jsonl")}

    def send(record, server_round, *, stage="evaluate", cid=0, context=None, run=RUN,
             clients=CLIENTS, flower_run=1, plaintext=False, **extra):
        he_step._DECRYPTED.clear()
        settings = ClientSettings(
            model=SPEC, seed=SEED, dataset="x", local_epochs=1, batch_size=8, lr=0.1,
            device="cpu", val_fraction=0.1, rounds=3, fraction=1.0,
            he=None if plaintext else HESettings(fingerprint=keyset.fp, run_id=run,
                                                 clients=clients))
        cfg = ConfigRecord({protocol.SETTINGS: settings.encode(),
                            protocol.ROUND: server_round,
                            protocol.DATA_DIR: str(tmp_path / "no-data")})
        kind = MessageType.EVALUATE if stage == "evaluate" else MessageType.TRAIN
        before = TaskIdentity.run_id
        TaskIdentity.run_id = flower_run
        try:
            msg = Message(RecordDict({protocol.ARRAYS: record, protocol.CONFIG: cfg}),
                          dst_node_id=100 + cid, message_type=kind)
        finally:
            TaskIdentity.run_id = before
        context = context or Context(run_id=flower_run, node_id=100 + cid,
                                     node_config=node(cid) | extra, state=RecordDict(),
                                     run_config={})
        fn = client_app.evaluate_local if stage == "evaluate" else client_app.train
        return guard(msg, context, fn)

    yield SimpleNamespace(send=send, node=node)
    he_step._load.cache_clear()


PASSED = "no prepared federation data"  # the HE checks passed, the test has no data


def _reason(reply: Message) -> str:
    assert reply.has_error()
    return reply.error.reason


def shifted(ks, record: ArrayRecord, offsets: np.ndarray) -> ArrayRecord:
    """The server's move: global + plaintext offsets (update, weight, presence, tags)."""
    out = [v + offsets[: v.size()].tolist() for v in vectors_of(ks, record)]
    return with_blobs(record, he.serialize_vectors(out, fingerprint=ks.fp))


def test_attack_error_oracle_refusal_text_is_fixed(keyset, round1, site):
    # Attack 1: the refusal said "off by 0.0123" (the largest tag deviation); 68 such
    # readings gave the server every tag value of a forgery. Now it reads a fixed text.
    offsets = np.zeros(keyset.layout.total)
    offsets[keyset.layout.tagged :] = np.linspace(-1, 1, keyset.layout.tags)
    texts = set()
    for cid in range(2):
        reason = _reason(site.send(shifted(keyset, round1.record, offsets * (cid + 1)), 1,
                                   cid=cid))
        texts.add(reason.split(": ", 1)[1])
        assert "off by" not in reason and "tolerance" not in reason
    assert texts == {he_tag.TagError.public_reason}


def test_attack_binary_oracle_gets_one_bit_per_site_and_run(keyset, round1, site):
    # Attack 2: accept/refuse alone, asked 768 times, learnt every tag. Now a site's
    # first refusal is its last answer for the run: honest bytes, other rounds, a
    # restarted client (new Context), evaluate or train, all refused unopened.
    offsets = np.zeros(keyset.layout.total)
    offsets[keyset.layout.tagged] = 1.0
    assert PASSED not in _reason(site.send(shifted(keyset, round1.record, offsets), 1))
    opened = []
    real_open = he_step._open
    he_step._open = lambda *a, **k: opened.append(1) or real_open(*a, **k)
    try:
        for stage, server_round in (("evaluate", 1), ("train", 2), ("evaluate", 2)):
            reason = _reason(site.send(round1.record, server_round, stage=stage))
            assert "refuses the rest" in reason
    finally:
        he_step._open = real_open
    assert opened == []  # nothing more was decrypted: no more bits
    assert PASSED in _reason(site.send(round1.record, 1, cid=1))  # other sites unaffected


def test_attack_other_bytes_for_an_accepted_round_are_refused_unopened(keyset, round1,
                                                                       site):
    # One global per (key set, run id, summed round) per site, evaluate and train
    # alike: a second candidate for round 1 is never decrypted, even after a restart.
    assert PASSED in _reason(site.send(round1.record, 1))
    again = with_blobs(round1.record, protocol.ciphertext_blobs(round1.record),
                       total=sum(WEIGHTS.values()) + 1e-12)
    for stage, server_round in (("evaluate", 1), ("train", 2)):
        assert "refused" in _reason(site.send(again, server_round, stage=stage))
    assert PASSED in _reason(site.send(round1.record, 2, stage="train"))
    # The refusals did not end the run: nothing of the secret was tested.
    assert PASSED in _reason(site.send(round1.record, 1))


def test_attack_adaptive_queries_leave_the_forgery_bound_overwhelming(keyset):
    # At most one bit per site and round key reaches the server (fixed refusal text,
    # one global per round, fail closed), so after N sites' answers a forgery of
    # max |d| >= delta passes with probability at most 2^(N + forgery_bound).
    # The digits CNN (188,810 parameters), d in the weighted sum (the average moves
    # by d / total weight): 100 sites at d = 10, 1000 sites at d = 100.
    for sites, delta, most in ((100, 10.0, -600), (1000, 100.0, -150)):
        layout = he_tag.Layout(num_params=188_810, num_clients=sites)
        assert sites + he_tag.forgery_bound(layout, 33, delta) <= most


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_attack_he_switched_off_mid_run_is_refused(keyset, round1, site, stage):
    # The server drops "he" from the settings of a run the site took part in under
    # HE: the site would load a plaintext global unchecked and reply in plaintext.
    assert PASSED in _reason(site.send(round1.record, 1, cid=4))
    reason = _reason(site.send(plain_initial(), 2, stage=stage, cid=4, plaintext=True))
    assert "took part in this run under HE" in reason
    # another Flower run (a plaintext run of its own) is not refused for it
    other = _reason(site.send(plain_initial(), 1, stage=stage, cid=4, plaintext=True,
                              flower_run=9))
    assert "under HE" not in other


def test_attack_run_id_reused_by_another_flower_run_is_refused(keyset, round1, site):
    # Attack 4 (a): the server announces run 1's run id again in a second Flower run
    # and replays run 1's round-1 sum as run 2's round-2 global.
    assert PASSED in _reason(site.send(round1.record, 1, cid=3, flower_run=1))
    reason = _reason(site.send(round1.record, 2, stage="train", cid=3, flower_run=2))
    assert "already used by another Flower run" in reason


def test_attack_second_contribution_under_one_binding_is_refused(keyset, site):
    # Attack 4 (b): two genuine contributions of client 0 under one tag key (round 1
    # of run id RUN, twice) let the server add K x their difference. The site
    # contributes once per (key set, run id, round): not in a second Flower run, not
    # after a restart (a fresh Context) of the same one.
    assert PASSED in _reason(site.send(plain_initial(), 1, stage="train"))
    again = _reason(site.send(plain_initial(), 1, stage="train"))  # restarted client
    assert "once per round" in again
    other_run = _reason(site.send(plain_initial(), 1, stage="train", flower_run=7))
    assert "already used by another Flower run" in other_run
    assert PASSED in _reason(site.send(plain_initial(), 1, stage="train", cid=1))


def test_attack_announced_clients_cannot_lower_a_sites_floor(keyset, site):
    # Attack 3: he.clients = 1 turned a site's he-min-contributors = 3 into 1, so one
    # client's contribution passed as the global. The site's floor stands.
    reason = _reason(site.send(plain_initial(), 1, stage="train", clients=1,
                               **{"he-min-contributors": 3}))
    assert "at least 3 distinct contributors" in reason
    assert PASSED in _reason(site.send(plain_initial(), 1, stage="train", cid=1,
                                       clients=3, **{"he-min-contributors": 3}))


def _final_run(folder, record: ArrayRecord, fingerprint: str):
    import json

    folder.mkdir(parents=True)
    np.savez(folder / he_step.ENCRYPTED_MODEL, **{k: record[k].numpy() for k in record})
    (folder / he_step.ENCRYPTED_MODEL_INFO).write_text(json.dumps(
        {"run_id": RUN, "clients": CLIENTS, "fingerprint": fingerprint,
         "model": SPEC.to_dict()}))
    return folder


def test_attack_decrypt_model_refuses_a_lone_or_earlier_round(keyset, round1, tmp_path):
    # Attack 9: keys decrypt-model took client 2's lone round-1 contribution as a
    # 3-round run's final model (floor 1, round never compared).
    lone = protocol.encrypted_record(
        protocol.ciphertext_blobs(round1.replies[2].content[protocol.ARRAYS]), 30.0,
        sum_round=1, basis=he_tag.initial_basis(SPEC.to_dict(), SEED))
    with pytest.raises(he_tag.TagError, match="1 distinct contribution"):
        he_step.open_final_model(_final_run(tmp_path / "a", lone, keyset.fp), keyset.client,
                                 expected_round=1)
    full = _final_run(tmp_path / "b", round1.record, keyset.fp)
    with pytest.raises(he_tag.TagError, match="sums round 1, the run completed round 3"):
        he_step.open_final_model(full, keyset.client, expected_round=3)
    _, contributors, sum_round = he_step.open_final_model(full, keyset.client,
                                                          expected_round=1)
    assert (contributors, sum_round) == ((0, 1, 2), 1)


def test_attack_nan_total_weight_is_refused(keyset, round1):
    record = with_blobs(round1.record, protocol.ciphertext_blobs(round1.record),
                        total=float("nan"))
    with pytest.raises(he_tag.TagError, match="announced total weight"):
        open_global(keyset, record, server_round=2)


def test_attack_copied_reply_and_borrowed_client_id_are_rejected(keyset, round1, caplog):
    # Attack 8 (c): client 0's ciphertexts sent again under client 3's id (and from
    # client 3's node) were summed twice; a reply claiming another node's client id
    # was admitted too.
    caplog.set_level("WARNING", logger="fedsim")
    honest = round1.replies[0].content
    copied = as_reply(RecordDict({
        protocol.ARRAYS: honest[protocol.ARRAYS], protocol.HE_CONFIG: honest[protocol.HE_CONFIG],
        protocol.METRICS: MetricRecord({protocol.CLIENT_ID: 3, protocol.NUM_EXAMPLES: 10.0,
                                        protocol.TRAIN_LOSS: 1.0})}), node=103)
    sess = session(keyset)
    he_step.global_state(plain_initial(), build_model(SPEC), sess, spec=SPEC, seed=SEED,
                         server_round=1, stage="train")
    borrowed = train_reply(keyset, 2, 1, sess)
    borrowed = as_reply(borrowed.content, node=103)  # says client 2, sent by node 103
    strategy = strategy_for(keyset)
    record, rejected = run_round(strategy, [*round1.replies[:2], copied, borrowed])
    assert rejected == 2 and strategy.stats.clients_replied == 2
    assert "same ciphertexts as another reply" in caplog.text
    assert "claims client 2 but comes from node 103" in caplog.text


def test_attack_bulk_refusal_stops_the_run_with_its_reason(keyset, round1, caplog):
    # Attack 8 (a): one well-formed bad reply the server cannot read makes every site
    # refuse the next global; the run then stopped saying only "0 usable updates".
    from flwr.app import Error

    caplog.set_level("WARNING", logger="fedsim")
    strategy = strategy_for(keyset, server_round=2)
    strategy.configure_train(2, round1.record, ConfigRecord({}), SimpleNamespace())
    refusals = [Message(Error(code=protocol.GLOBAL_REFUSED,
                              reason=f"client {c}: {he_tag.TagError.public_reason}"),
                        reply_to=Message(RecordDict(), dst_node_id=100 + c,
                                         message_type=MessageType.TRAIN))
                for c in range(CLIENTS)]
    record, _ = strategy.aggregate_train(2, refusals)
    assert record is None
    assert "4 client(s) refused the global of round 1" in strategy.stop_reason
