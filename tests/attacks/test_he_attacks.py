"""Secure aggregation attacked as a malicious server (and a malicious client) would.

The server holds server.ctx (parameters, no key), every ciphertext it was sent and
the run's messages; a malicious client holds the key set but plays by its own
rules. Each test plays one of them with real TenSEAL, the real server codec and
strategy, and the real client steps, and asserts the attack is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import tenseal as ts
import torch
from flwr.app import (
    ArrayRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from fedsim import protocol
from fedsim.client import he_step
from fedsim.fedmodels.models import ModelSpec, build_model, register
from fedsim.privacy import he, he_tag, keys
from fedsim.server.aggregate import Accumulator
from fedsim.server.he_codec import HECodec
from tests.attacks import wire

PASS = "attack test passphrase"
SPEC = ModelSpec(name="attack-linear", input_shape=(1, 8, 8), num_classes=10)
SEED = 5
CLIENTS = 4
RUN = "sim-attacks"
SETTINGS = {"model": SPEC.to_dict(), "seed": SEED}
WEIGHTS = {0: 10.0, 1: 20.0, 2: 30.0}


register("attack-linear", "a 650-parameter linear model (one compact ciphertext)",
         lambda spec: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))


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
                                settings=SETTINGS, server_round=server_round, stage=stage)


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
        he_step.global_state(global_record, build_model(SPEC), sess, settings=SETTINGS,
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
        he_step.global_state(record, build_model(SPEC), sess, settings=SETTINGS,
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
