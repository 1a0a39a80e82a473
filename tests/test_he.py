"""CKKS codec: HE aggregation equals plaintext FedAvg; bad ciphertexts are refused."""

import math

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ConfigError, FedsimError
from fedsim.privacy import he
from fedsim.server.aggregate import Accumulator, fedavg

SET_NAMES = list(he.PARAMETER_SETS)
TARGET = 1e-5


@pytest.fixture(scope="module")
def contexts():
    """Per parameter set: (secret context, public context as the server loads it)."""
    out = {}
    for name, params in he.PARAMETER_SETS.items():
        secret = he.create_context(params)
        public = he.load_public_context(he.public_context_bytes(secret))
        out[name] = (secret, public)
    return out


@pytest.fixture(scope="module")
def sym_contexts():
    """Per parameter set: (symmetric secret context, keyless server twin, fingerprint)."""
    out = {}
    for name, params in he.PARAMETER_SETS.items():
        secret = he.create_context(params, symmetric=True)
        server_bytes = he.public_context_bytes(secret)
        fp = he.fingerprint(server_bytes, b"key-id-%d" % len(out))
        out[name] = (secret, he.load_public_context(server_bytes), fp)
    return out


@pytest.fixture(params=["public-key", "symmetric"])
def any_contexts(request, contexts, sym_contexts):
    """Both key modes as {name: (secret, server, fingerprint or None)}."""
    if request.param == "symmetric":
        return sym_contexts
    return {name: (*pair, None) for name, pair in contexts.items()}


def he_average(contexts, name, updates, weights):
    """Clients encrypt weight*update, the server adds, the clients decrypt/divide."""
    secret, public, *rest = contexts[name]
    fp = rest[0] if rest else None
    shapes = [a.shape for a in updates[0]]
    params = he.PARAMETER_SETS[name]
    count = he.expected_vector_count(sum(a.size for a in updates[0]), params)
    acc = Accumulator()
    for update, weight in zip(updates, weights, strict=True):
        blobs = he.encrypt_update(secret, update, weight, fingerprint=fp)
        acc.add(he.load_ciphertexts(public, blobs, expected_count=count, fingerprint=fp),
                weight)
    summed = he.serialize_vectors(acc.total, fingerprint=fp)
    return he.decrypt_average(secret, summed, shapes=shapes, total_weight=acc.weight,
                              fingerprint=fp)


def max_error(got, expected):
    return max(
        float(np.max(np.abs(g.astype(np.float64) - np.asarray(e, np.float64))))
        for g, e in zip(got, expected, strict=True)
    )


@pytest.mark.parametrize("name", SET_NAMES)
@settings(max_examples=10, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple),
        min_size=1,
        max_size=3,
    ),
    weights=st.lists(st.integers(1, 1000), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_he_aggregation_equals_fedavg(contexts, name, shapes, weights, seed):
    # Prepare
    rng = np.random.default_rng(seed)
    updates = [
        [rng.uniform(-3, 3, size=s).astype(np.float32) for s in shapes] for _ in weights
    ]
    # Execute
    got = he_average(contexts, name, updates, weights)
    # Assert
    assert [g.shape for g in got] == [tuple(s) for s in shapes]
    assert all(g.dtype == np.float32 for g in got)
    assert max_error(got, fedavg(updates, weights)) <= TARGET


@pytest.mark.parametrize("name", SET_NAMES)
def test_error_target_with_100_heavy_clients(any_contexts, name):
    # Prepare: 100 clients, weights up to 1000, values up to |3|, across 2+ vectors
    rng = np.random.default_rng(7)
    size = he.PARAMETER_SETS[name].slots + 100
    updates = [[rng.uniform(-3, 3, size=size).astype(np.float32)] for _ in range(100)]
    for update in updates:
        update[0][:10] = 3.0  # the largest sum: every client at +3
    weights = rng.integers(900, 1001, size=100).astype(float)
    # Execute
    got = he_average(any_contexts, name, updates, weights)
    # Assert
    assert max_error(got, fedavg(updates, weights)) <= TARGET
    assert np.sum(weights) * 3 < he.PARAMETER_SETS[name].max_abs_sum


@pytest.mark.parametrize("name", SET_NAMES)
def test_error_target_single_light_client(any_contexts, name):
    # Prepare: the worst case for noise, one client of weight 1
    update = [np.random.default_rng(3).uniform(-3, 3, size=(40, 40))]
    # Execute
    got = he_average(any_contexts, name, [update], [1.0])
    # Assert
    assert max_error(got, update) <= TARGET


@settings(max_examples=20, deadline=None)
@given(num_params=st.integers(1, 10**7), name=st.sampled_from(SET_NAMES))
def test_vector_count_is_ceiling_of_slots(num_params, name):
    params = he.PARAMETER_SETS[name]
    count = he.expected_vector_count(num_params, params)
    assert (count - 1) * params.slots < num_params <= count * params.slots


def test_parameter_sets_security_and_size():
    assert he.PARAMETER_SETS["default"].security == 128
    assert he.PARAMETER_SETS["compact"].security == 192
    assert he.PARAMETER_SETS["compact"].max_abs_sum == 2.0**22


@pytest.mark.parametrize(("name", "limit"), [("default", 84), ("compact", 32)])
def test_wire_bytes_per_parameter(contexts, name, limit):
    secret, _ = contexts[name]
    slots = he.PARAMETER_SETS[name].slots
    blobs = he.encrypt_update(secret, [np.zeros(4 * slots, np.float32)], 1.0)
    assert len(blobs) == 4
    assert he.bytes_per_parameter(blobs, 4 * slots) <= limit


def test_invalid_parameter_set_reports_every_problem():
    with pytest.raises(ConfigError) as info:
        he.HEParams(
            name="bad",
            poly_modulus_degree=4096,
            coeff_mod_bit_sizes=(60, 60),
            global_scale_bits=60,
        )
    text = str(info.value)
    assert "no integer bits" in text and "below 128-bit security" in text
    assert len(info.value.problems) == 2


def test_unknown_parameter_set_names_the_known_ones():
    with pytest.raises(ConfigError, match="default, compact"):
        he.get_params("huge")


def test_server_context_holds_no_secret_key(contexts):
    secret, public = contexts["compact"]
    assert secret.is_private()
    assert not public.is_private()
    assert not public.has_relin_keys() and not public.has_galois_keys()
    with pytest.raises(he.ContextError, match="secret key"):
        he.load_public_context(he.secret_context_bytes(secret))


def test_public_and_secret_twins_share_a_fingerprint(contexts):
    secret, public = contexts["default"]
    assert he.context_fingerprint(secret) == he.context_fingerprint(public)
    assert len(he.context_fingerprint(public)) == 64


def test_symmetric_server_twin_holds_no_key_and_needs_the_fingerprint(sym_contexts):
    secret, server, fp = sym_contexts["compact"]
    assert he.is_symmetric(secret) and not server.is_private()
    assert len(he.public_context_bytes(secret)) < 200  # parameters only, no key
    with pytest.raises(ValueError, match="doesn't support encryption"):
        ts.ckks_vector(server, [1.0])
    with pytest.raises(he.ContextError, match="pass the key set's fingerprint"):
        he.encrypt_update(secret, [np.ones(3)], 1.0)
    blobs = he.encrypt_update(secret, [np.ones(3)], 1.0, fingerprint=fp)
    with pytest.raises(he.CiphertextError, match="another key set"):
        he.load_ciphertexts(server, blobs, expected_count=1, fingerprint="cd" * 32)
    with pytest.raises(he.ContextError, match="64 hex digits"):
        he.load_ciphertexts(server, blobs, expected_count=1, fingerprint="xyz")


def test_symmetric_encryption_is_less_noisy(contexts, sym_contexts):
    # One ciphertext of zeros decrypts to pure fresh noise.
    zeros = [np.zeros(he.PARAMETER_SETS["compact"].slots)]
    noise = {}
    for mode, (secret, _, fp) in {"public": (*contexts["compact"], None),
                                  "symmetric": sym_contexts["compact"]}.items():
        blobs = he.encrypt_update(secret, zeros, 1.0, fingerprint=fp)
        out = he.decrypt_average(secret, blobs, shapes=[zeros[0].shape], total_weight=1.0,
                                 fingerprint=fp)
        noise[mode] = float(np.max(np.abs(out[0].astype(np.float64))))
    assert noise["symmetric"] < noise["public"]


def test_decrypt_needs_the_secret_context(contexts):
    secret, public = contexts["compact"]
    blobs = he.encrypt_update(public, [np.ones(3)], 2.0)
    with pytest.raises(he.ContextError, match="secret context"):
        he.decrypt_average(public, blobs, shapes=[(3,)], total_weight=2.0)
    out = he.decrypt_average(secret, blobs, shapes=[(3,)], total_weight=2.0)
    assert max_error(out, [np.ones(3)]) <= TARGET


# --- rejection of bad ciphertexts ----------------------------------------------


@pytest.fixture(scope="module")
def two_vector_update(contexts):
    secret, public = contexts["compact"]
    values = [np.linspace(-1, 1, he.PARAMETER_SETS["compact"].slots + 5)]
    return public, he.encrypt_update(secret, values, 3.0)


def test_wrong_vector_count_is_rejected(two_vector_update):
    public, blobs = two_vector_update
    with pytest.raises(he.CiphertextError, match="got 1 ciphertexts, expected 2"):
        he.load_ciphertexts(public, blobs[:1], expected_count=2)


@pytest.mark.parametrize("cut", [10, 40, 1000, -1])
def test_truncated_bytes_are_rejected(two_vector_update, cut):
    public, blobs = two_vector_update
    broken = [blobs[0], blobs[1][:cut]]
    with pytest.raises(he.CiphertextError, match="ciphertext 1"):
        he.load_ciphertexts(public, broken, expected_count=2)


def test_garbage_bytes_are_rejected(two_vector_update):
    public, blobs = two_vector_update
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, size=len(blobs[0]), dtype=np.uint8).tobytes()
    for bad in (garbage, b"", b"FSCK", "not bytes", blobs[0][:-1]):
        with pytest.raises(he.CiphertextError, match="ciphertext 0"):
            he.load_ciphertexts(public, [bad, blobs[1]], expected_count=2)


def test_framed_empty_vector_is_rejected(two_vector_update):
    # TenSEAL loads b"" as a vector of size 0; framed correctly, the wire check refuses it.
    public, blobs = two_vector_update
    empty = ts.lazy_ckks_vector_from(b"")
    empty.link_context(public)
    framed = he.serialize_vectors([empty])[0]
    with pytest.raises(he.CiphertextError, match="ciphertext 1 is malformed"):
        he.load_ciphertexts(public, [blobs[0], framed], expected_count=2)


def test_flipped_byte_fails_the_checksum(two_vector_update):
    public, blobs = two_vector_update
    for position in (60, len(blobs[0]) // 2, len(blobs[0]) - 1):
        flipped = bytearray(blobs[0])
        flipped[position] ^= 0x01
        with pytest.raises(he.CiphertextError, match="checksum"):
            he.load_ciphertexts(public, [bytes(flipped), blobs[1]], expected_count=2)


def test_ciphertexts_from_another_key_are_rejected(two_vector_update):
    public, _ = two_vector_update
    stranger = he.create_context(he.PARAMETER_SETS["compact"])  # same params, new key
    blobs = he.encrypt_update(stranger, [np.ones(10)], 1.0)
    with pytest.raises(he.CiphertextError, match="another key set"):
        he.load_ciphertexts(public, blobs, expected_count=1)


def test_ciphertexts_from_other_parameters_are_rejected(two_vector_update, contexts):
    public, _ = two_vector_update
    blobs = he.encrypt_update(contexts["default"][0], [np.ones(10)], 1.0)
    with pytest.raises(he.CiphertextError):
        he.load_ciphertexts(public, blobs, expected_count=1)


def test_forged_frame_from_other_parameters_is_rejected(two_vector_update, contexts):
    # Framed with this context's fingerprint, TenSEAL's parameter check still refuses.
    public, blobs = two_vector_update
    foreign = ts.ckks_vector(contexts["default"][0], [1.0] * 10)
    foreign.link_context(public)
    forged = he.serialize_vectors([foreign])[0]
    with pytest.raises(he.CiphertextError, match="ciphertext 1 "):
        he.load_ciphertexts(public, [blobs[0], forged], expected_count=2)


def test_wrong_vector_sizes_are_rejected(two_vector_update):
    public, blobs = two_vector_update
    slots = he.PARAMETER_SETS["compact"].slots
    with pytest.raises(he.CiphertextError, match="holds 5 values"):
        he.load_ciphertexts(public, blobs, expected_count=2, num_params=slots + 6)
    with pytest.raises(he.CiphertextError, match="holds 5 values"):
        he.load_ciphertexts(public, blobs[::-1], expected_count=2)


def test_every_rejection_is_a_fedsim_error(two_vector_update):
    public, blobs = two_vector_update
    assert issubclass(he.CiphertextError, FedsimError)
    for cut in range(0, 200, 7):
        with pytest.raises(FedsimError):
            he.load_ciphertexts(public, [blobs[0][:cut], blobs[1]], expected_count=2)


def test_encode_refuses_bad_updates(contexts):
    secret, _ = contexts["compact"]
    with pytest.raises(he.EncodingError, match="positive finite"):
        he.encrypt_update(secret, [np.ones(3)], 0.0)
    with pytest.raises(he.EncodingError, match="NaN"):
        he.encrypt_update(secret, [np.array([1.0, math.nan])], 1.0)
    with pytest.raises(he.EncodingError, match="capacity"):
        he.encrypt_update(secret, [np.full(3, 5e6)], 1.0)
