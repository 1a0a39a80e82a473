"""CKKS secure aggregation codec: parameter sets, contexts, packing and wire format.

No Flower and no CLI here. Clients encrypt their update *already multiplied by
their weight*; the server, holding only the public context, adds ciphertexts;
clients decrypt the sum and divide by the total weight.

Parameter sets (security per the HomomorphicEncryption.org standard tables, the
same limits SEAL enforces; `total bits` counts every prime, special prime included):

- ``default``: N=8192, primes [60, 40, 40, 60], scale 2^40. 200 of 218 bits allowed
  for 128-bit security. Ciphertexts live on the three data primes (140 bits), so the
  sum may reach 2^99 in magnitude; fresh noise is about 2^13.4 scaled units (error
  ~1e-8). About 81 B per parameter on the wire (20x fp32).
- ``compact``: N=4096, primes [56, 19], scale 2^33, for averaging only (no
  ciphertext is ever multiplied). TenSEAL always creates relinearization keys, so it
  needs a second (special) prime; it is never used, so it is as small as the
  192-bit table allows: 56 + 19 = 75 bits, the limit for N=4096 at 192-bit security.
  A ciphertext is 2 polynomials x 4096 coefficients x 8 B for 2048 slots = 32 B per
  slot raw; a 56-bit prime leaves the top byte of each word zero, which SEAL's zstd
  compression drops: about 30.3 B per parameter.
  Precision budget of the 56-bit data prime: 1 sign bit, 33 fractional bits (the
  scale) and 22 integer bits, so |sum of weight*value| must stay below 2^22 ~ 4.2e6
  (14x the 3e5 of 100 clients x weight 1000 x |3|). Fresh noise is at most ~2^12.5
  scaled units, i.e. <= 7e-7 per ciphertext; the average divides the summed noise
  (which grows like sqrt(clients)) by the total weight, so even one client of weight
  1 stays 15x under the 1e-5 target. A 48-bit prime would save ~3 B/param but leave
  no scale that meets both the capacity and the error target.

Key modes: a public-key context (clients encrypt with the public key; the server
context carries it, and its fingerprint is SHA-256 of the serialized public
context) or a symmetric-key context, what `fedsim keys init` provisions (clients
encrypt with the secret key: 0.6-0.7x the encryption time per update, 1/7 to 1/10
of the fresh noise; the server context carries no key at all, and the key set's
fingerprint comes from the key files, passed to the codec as `fingerprint=`).

Wire format of one ciphertext: ``b"FSCK"``, a version byte, the 32-byte key-set
fingerprint it was made under, a 16-byte BLAKE2b checksum of
the payload, then TenSEAL's serialized CKKSVector (53 bytes of framing per ~62 KiB).
TenSEAL itself only notices a ciphertext from *different parameters*: two contexts
with the same parameters but different keys load each other's ciphertexts silently
(and decrypt to noise), hence the fingerprint in every frame. Nor does it notice
most flipped bytes inside the coefficient data (any value below the prime parses),
hence the checksum. Neither is a MAC: anyone can recompute both. Against a
malicious server the clients check secret tags after decrypting (`he_tag`); every
frame a client or the server reads is first checked field by field and capped in
size (`he_wire`), so malformed bytes are refused before TenSEAL or SEAL parse them.

What "no key" does not give: the server holds no key, yet it can build RLWE
ciphertexts of its own (c0 = NTT(scale*m), c1 = NTT(1) decrypts to m plus the small
secret over the scale), add plaintexts, scale by integer polynomials, replay and
drop. Only the tags of `he_tag` make such a global detectable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import tenseal as ts

from fedsim.errors import ConfigError, FedsimError
from fedsim.privacy.he_wire import FreshShape, WireError, check_payload


class HEError(FedsimError):
    """A homomorphic-encryption step cannot proceed."""


class ContextError(HEError):
    """A TenSEAL context is unreadable or not of the kind required (public/secret)."""


class CiphertextError(HEError):
    """Ciphertext bytes are malformed, of the wrong count, or from another context."""


class EncodingError(HEError):
    """An update cannot be encoded: bad weight, non-finite values, beyond capacity."""


class ParamSetName(StrEnum):
    """The provisioned parameter sets, by name."""

    DEFAULT = "default"
    COMPACT = "compact"


# HomomorphicEncryption.org standard (ternary secret, classical attacks): the most
# coefficient-modulus bits allowed for each N at 128, 192 and 256-bit security.
_HE_STANDARD_MAX_BITS: Mapping[int, Mapping[int, int]] = {
    1024: {128: 27, 192: 19, 256: 14},
    2048: {128: 54, 192: 37, 256: 29},
    4096: {128: 109, 192: 75, 256: 58},
    8192: {128: 218, 192: 152, 256: 118},
    16384: {128: 438, 192: 305, 256: 237},
    32768: {128: 881, 192: 611, 256: 476},
}
_FRAME_MAGIC = b"FSCK"
_FRAME_VERSION = 1
_DIGEST_BYTES = 32
_CHECK_BYTES = 16
_FRAME_HEADER = len(_FRAME_MAGIC) + 1 + _DIGEST_BYTES + _CHECK_BYTES


def security_bits(poly_modulus_degree: int, total_bits: int) -> int:
    """Security level (128/192/256) of N and a total modulus size; 0 if below 128."""
    limits = _HE_STANDARD_MAX_BITS.get(poly_modulus_degree, {})
    levels = [level for level, most in limits.items() if total_bits <= most]
    return max(levels, default=0)


@dataclass(frozen=True, kw_only=True)
class HEParams:
    """One CKKS parameter set: ring degree, prime sizes and encoding scale.

    The last prime is the special (key-switching) prime; ciphertexts live on the
    others (the data primes).
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    global_scale_bits: int

    def __post_init__(self) -> None:
        problems = _param_problems(self)
        if problems:
            raise ConfigError(
                [f"HE parameter set '{self.name}': {p}" for p in problems]
            )

    @property
    def slots(self) -> int:
        """Values packed into one ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        """Bits of the whole coefficient modulus (what security depends on)."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def data_bits(self) -> int:
        """Bits of the modulus ciphertexts live on (special prime excluded)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def security(self) -> int:
        """Security level in bits per the HE standard tables."""
        return security_bits(self.poly_modulus_degree, self.total_bits)

    @property
    def max_abs_sum(self) -> float:
        """Largest |sum of weight*value| a slot holds before it wraps around."""
        return 2.0 ** (self.data_bits - 1 - self.global_scale_bits)


def _param_problems(p: HEParams) -> list[str]:
    """Every reason a parameter set is unusable (empty when it is fine)."""
    problems = []
    if p.poly_modulus_degree not in _HE_STANDARD_MAX_BITS:
        problems.append(
            f"poly_modulus_degree {p.poly_modulus_degree} must be a power of two "
            "from 1024 to 32768"
        )
    if len(p.coeff_mod_bit_sizes) < 2:
        problems.append(
            "coeff_mod_bit_sizes needs a data prime and a special prime "
            "(TenSEAL always makes relinearization keys)"
        )
    if any(not 2 <= bits <= 60 for bits in p.coeff_mod_bit_sizes):
        problems.append("each prime in coeff_mod_bit_sizes must have 2 to 60 bits")
    if len(p.coeff_mod_bit_sizes) >= 2 and p.global_scale_bits >= p.data_bits - 1:
        problems.append(
            f"global_scale_bits {p.global_scale_bits} leaves no integer bits in the "
            f"{p.data_bits}-bit data modulus; lower the scale or enlarge the primes"
        )
    if p.poly_modulus_degree in _HE_STANDARD_MAX_BITS and p.security < 128:
        most = _HE_STANDARD_MAX_BITS[p.poly_modulus_degree][128]
        problems.append(
            f"{p.total_bits} modulus bits at N={p.poly_modulus_degree} is below "
            f"128-bit security (at most {most}); use fewer or smaller primes"
        )
    return problems


PARAMETER_SETS: Mapping[str, HEParams] = {
    ParamSetName.DEFAULT: HEParams(
        name="default",
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(60, 40, 40, 60),
        global_scale_bits=40,
    ),
    ParamSetName.COMPACT: HEParams(
        name="compact",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(56, 19),
        global_scale_bits=33,
    ),
}


def get_params(name: str) -> HEParams:
    """Return the parameter set called `name`; unknown names raise a ConfigError."""
    if name not in PARAMETER_SETS:
        raise ConfigError(
            f"unknown HE parameter set '{name}'; choose one of: "
            f"{', '.join(PARAMETER_SETS)}"
        )
    return PARAMETER_SETS[name]


# --- contexts -------------------------------------------------------------------


def create_context(params: HEParams, *, symmetric: bool = False) -> ts.Context:
    """Create a CKKS context holding the secret key (for provisioning only).

    ``symmetric=True`` makes a context that encrypts with the secret key itself
    (SEAL's symmetric encryption): 0.4-0.6x the time per ciphertext, 1/7 to 1/10 of
    the fresh noise, and no public key exists. That does not stop anyone from making
    ciphertexts (see the module docstring): clients authenticate sums with `he_tag`.
    Its server twin holds no key at all, so it cannot identify its key
    set: callers pass the key set's fingerprint (see `keys.provision`).
    """
    kind = ts.ENCRYPTION_TYPE.SYMMETRIC if symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=kind,
    )
    ctx.global_scale = 2.0**params.global_scale_bits
    return ctx


def is_symmetric(ctx: ts.Context) -> bool:
    """Tell whether a context encrypts with the secret key (no public key exists)."""
    try:
        ctx.has_public_key()
    except ValueError:  # TenSEAL: "has_public_key is not supported for symmetric ..."
        return True
    return False


def public_context_bytes(ctx: ts.Context) -> bytes:
    """Serialize what the server gets: the public key (asymmetric) or no key at all.

    Never the secret key, relinearization or Galois keys.
    """
    return ctx.serialize(
        save_public_key=not is_symmetric(ctx),
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def secret_context_bytes(ctx: ts.Context) -> bytes:
    """Serialize a context with its secret key (and public key, if any): clients'."""
    if not ctx.is_private():
        raise ContextError(
            "this context holds no secret key; nothing to save for clients"
        )
    return ctx.serialize(
        save_public_key=not is_symmetric(ctx),
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def fingerprint(public_bytes: bytes, key_id: bytes = b"") -> str:
    """SHA-256 hex digest of a key set: its random id (symmetric sets) and server bytes."""
    return hashlib.sha256(key_id + public_bytes).hexdigest()


def context_fingerprint(ctx: ts.Context) -> str:
    """Fingerprint of an asymmetric context's public part (the same for its secret twin).

    A symmetric context has no public key to identify it: its fingerprint comes with
    the key files (`keys.provision`), and is passed to the codec explicitly.
    """
    if is_symmetric(ctx):
        raise ContextError(
            "a symmetric-key context carries no public key to fingerprint; pass the "
            "key set's fingerprint (from its key files)"
        )
    return fingerprint(public_context_bytes(ctx))


def _digest(ctx: ts.Context, given: str | None) -> bytes:
    """The 32-byte key-set digest frames carry: `given`, else the context's own."""
    value = context_fingerprint(ctx) if given is None else given
    try:
        digest = bytes.fromhex(value)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != _DIGEST_BYTES:
        raise ContextError(f"a key-set fingerprint is 64 hex digits, got {value!r}")
    return digest


def _load_context(data: bytes) -> ts.Context:
    """Deserialize a context, turning any TenSEAL failure into a ContextError."""
    if not isinstance(data, bytes) or not data:
        raise ContextError("context bytes are empty or not bytes")
    try:
        return ts.context_from(data)
    except Exception as err:  # TenSEAL raises ValueError/RuntimeError/TypeError
        raise ContextError(f"bytes are not a TenSEAL context ({err})") from err


def load_public_context(data: bytes) -> ts.Context:
    """Load the server's context; refuse bytes that hold a secret key."""
    ctx = _load_context(data)
    if ctx.is_private():
        raise ContextError(
            "the context holds a secret key; the server must get the public "
            "context only (server.ctx from `fedsim keys init`)"
        )
    if not is_symmetric(ctx) and not ctx.has_public_key():
        raise ContextError("the context has no public key; re-provision the keys")
    return ctx


def load_secret_context(data: bytes) -> ts.Context:
    """Load a client's context; refuse bytes without the secret key."""
    ctx = _load_context(data)
    if not ctx.is_private():
        raise ContextError("the context holds no secret key; clients need client.key")
    return ctx


def slot_count(ctx: ts.Context) -> int:
    """Values one ciphertext of this context holds (N/2)."""
    data = ctx.seal_context().data.first_context_data()
    return data.parms().poly_modulus_degree() // 2


def capacity(ctx: ts.Context) -> float:
    """Largest |value| a slot of this context holds before it wraps around."""
    bits = ctx.seal_context().data.first_context_data().total_coeff_modulus_bit_count()
    return 2.0 ** (bits - 1) / ctx.global_scale


# --- packing --------------------------------------------------------------------


def expected_vector_count(num_params: int, params: HEParams) -> int:
    """Ciphertexts one update of `num_params` values takes under `params`."""
    return _vector_count(num_params, params.slots)


def _vector_count(num_params: int, slots: int) -> int:
    if num_params < 1:
        raise EncodingError(f"an update needs at least one value, got {num_params}")
    return math.ceil(num_params / slots)


def _flatten_weighted(arrays: Sequence[np.ndarray], weight: float) -> np.ndarray:
    """All arrays times `weight` as one float64 vector, checked to be finite."""
    if not math.isfinite(weight) or weight <= 0:
        raise EncodingError(f"weight must be a positive finite number, got {weight}")
    if not arrays:
        raise EncodingError("the update holds no arrays")
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    flat *= weight
    if not np.all(np.isfinite(flat)):
        raise EncodingError("the update holds NaN or infinite values; fix training")
    return flat


def _split(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Cut a flat vector back into float32 arrays of the given shapes."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(shape).astype(np.float32))
        start += size
    return out


# --- framing --------------------------------------------------------------------


def _frame(payload: bytes, digest: bytes) -> bytes:
    """Prefix TenSEAL bytes with magic, version, context fingerprint, checksum."""
    check = hashlib.blake2b(payload, digest_size=_CHECK_BYTES).digest()
    return _FRAME_MAGIC + bytes([_FRAME_VERSION]) + digest + check + payload


def _unframe(blob: object, index: int, digest: bytes, limit: int) -> bytes:
    """Return the TenSEAL bytes of an intact frame made under `digest`'s context.

    `limit` caps the payload: no frame longer than one fresh ciphertext's worst case
    is copied, hashed or parsed.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CiphertextError(
            f"ciphertext {index} is a {type(blob).__name__}, not bytes"
        )
    if len(blob) > _FRAME_HEADER + limit:
        raise CiphertextError(
            f"ciphertext {index} is {len(blob)} bytes, more than the "
            f"{_FRAME_HEADER + limit} a fresh ciphertext of this context can take"
        )
    blob = bytes(blob)
    if len(blob) < _FRAME_HEADER or not blob.startswith(_FRAME_MAGIC):
        raise CiphertextError(
            f"ciphertext {index} is not a fedsim CKKS frame "
            "(truncated or garbage bytes)"
        )
    version, sent, check = _frame_fields(blob)
    if version != _FRAME_VERSION:
        raise CiphertextError(
            f"ciphertext {index} has frame version {version}, this fedsim reads "
            f"version {_FRAME_VERSION}; run the same fedsim on both sides"
        )
    if sent != digest:
        raise CiphertextError(
            f"ciphertext {index} was made under context {sent.hex()[:16]}, "
            f"expected {digest.hex()[:16]}; the sender uses another key set"
        )
    payload = blob[_FRAME_HEADER:]
    if hashlib.blake2b(payload, digest_size=_CHECK_BYTES).digest() != check:
        raise CiphertextError(
            f"ciphertext {index} fails its checksum (truncated or corrupted bytes)"
        )
    return payload


def _frame_fields(blob: bytes) -> tuple[int, bytes, bytes]:
    """Split a frame header into version, context fingerprint and checksum."""
    at = len(_FRAME_MAGIC)
    digest_end = at + 1 + _DIGEST_BYTES
    return blob[at], blob[at + 1 : digest_end], blob[digest_end:_FRAME_HEADER]


# --- client side: encrypt, decrypt ----------------------------------------------


def encrypt_update(
    ctx: ts.Context,
    arrays: Sequence[np.ndarray],
    weight: float,
    *,
    fingerprint: str | None = None,
) -> list[bytes]:
    """Encrypt weight*update, packed into as few ciphertexts as the slots allow.

    `fingerprint` names the key set in every frame (required for symmetric-key
    contexts; an asymmetric context's own is used when omitted).
    """
    return encrypt_flat(ctx, _flatten_weighted(arrays, weight), fingerprint=fingerprint)


def encrypt_flat(
    ctx: ts.Context, flat: np.ndarray, *, fingerprint: str | None = None
) -> list[bytes]:
    """Encrypt one flat float64 vector (already weighted), checked against capacity."""
    limit = capacity(ctx)
    peak = float(np.max(np.abs(flat)))
    if peak >= limit:
        raise EncodingError(
            f"weighted update reaches |{peak:.3g}|, above this context's capacity "
            f"{limit:.3g}; use smaller weights or the 'default' parameter set"
        )
    slots = slot_count(ctx)
    digest = _digest(ctx, fingerprint)
    chunks = (flat[start : start + slots] for start in range(0, flat.size, slots))
    return [_frame(ts.ckks_vector(ctx, c.tolist()).serialize(), digest) for c in chunks]


def decrypt_average(
    secret_ctx: ts.Context,
    blobs: Sequence[bytes],
    *,
    shapes: Sequence[tuple[int, ...]],
    total_weight: float,
    fingerprint: str | None = None,
) -> list[np.ndarray]:
    """Decrypt an aggregated sum and divide by the total weight: float32 arrays."""
    if not secret_ctx.is_private():
        raise ContextError(
            "decrypting needs the secret context (client.key), not a public one"
        )
    if not math.isfinite(total_weight) or total_weight <= 0:
        raise EncodingError(
            f"total weight must be positive and finite, got {total_weight}"
        )
    num_params = sum(math.prod(shape) for shape in shapes)
    flat = decrypt_flat(secret_ctx, blobs, num_values=num_params, fingerprint=fingerprint)
    return _split(flat / total_weight, shapes)


def decrypt_flat(
    secret_ctx: ts.Context,
    blobs: Sequence[bytes],
    *,
    num_values: int,
    fingerprint: str | None = None,
) -> np.ndarray:
    """Check and decrypt the ciphertexts of one flat vector of `num_values` values."""
    if not secret_ctx.is_private():
        raise ContextError(
            "decrypting needs the secret context (client.key), not a public one"
        )
    count = _vector_count(num_values, slot_count(secret_ctx))
    vectors = load_ciphertexts(
        secret_ctx, blobs, expected_count=count, num_params=num_values,
        fingerprint=fingerprint,
    )
    return np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])


def split_arrays(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Cut a flat vector into float32 arrays of the given shapes."""
    return _split(flat, shapes)


# --- server side: load, add, serialize ------------------------------------------


def load_ciphertexts(
    public_ctx: ts.Context,
    blobs: Sequence[bytes],
    *,
    expected_count: int,
    num_params: int | None = None,
    fingerprint: str | None = None,
) -> list[ts.CKKSVector]:
    """Deserialize and check one update's ciphertexts; any defect is a CiphertextError.

    Checked: the count, each frame's context fingerprint, that TenSEAL can parse the
    bytes under this context's parameters, and that each vector is a fresh-level
    ciphertext at the context's scale, packed as `encrypt_update` packs (every
    vector full but the last; exact sizes when `num_params` is given).
    """
    if len(blobs) != expected_count:
        raise CiphertextError(
            f"got {len(blobs)} ciphertexts, expected {expected_count} for this model"
        )
    digest = _digest(public_ctx, fingerprint)
    sizes = _expected_sizes(public_ctx, expected_count, num_params)
    shape = fresh_shape(public_ctx)
    vectors = []
    for index, blob in enumerate(blobs):
        payload = _unframe(blob, index, digest, shape.max_payload)
        vector = _deserialize(public_ctx, payload, index, shape)
        _check_vector(public_ctx, vector, index, sizes[index])
        vectors.append(vector)
    return vectors


def fresh_shape(ctx: ts.Context) -> FreshShape:
    """What a fresh ciphertext of this context looks like on the wire."""
    data = ctx.seal_context().data.first_context_data()
    parms = data.parms()
    words = ctx.seal_context().data.first_parms_id()
    return FreshShape(
        parms_id=b"".join(int(w).to_bytes(8, "little") for w in words),
        poly_modulus_degree=parms.poly_modulus_degree(),
        primes=data.chain_index() + 1,
        scale=float(ctx.global_scale),
        slots=parms.poly_modulus_degree() // 2,
    )


def max_frame_bytes(ctx: ts.Context) -> int:
    """The longest frame (header + payload) a reply's ciphertext may have."""
    return _FRAME_HEADER + fresh_shape(ctx).max_payload


def _expected_sizes(
    ctx: ts.Context, count: int, num_params: int | None
) -> list[tuple[int, int]]:
    """Return the allowed (min, max) size of each vector of an update."""
    slots = slot_count(ctx)
    if num_params is None:
        return [(slots, slots)] * (count - 1) + [(1, slots)]
    if _vector_count(num_params, slots) != count:
        raise CiphertextError(
            f"{num_params} parameters take {_vector_count(num_params, slots)} "
            f"ciphertexts, but {count} were expected; check the model on both sides"
        )
    last = num_params - slots * (count - 1)
    return [(slots, slots)] * (count - 1) + [(last, last)]


def _deserialize(
    ctx: ts.Context, payload: bytes, index: int, shape: FreshShape
) -> ts.CKKSVector:
    """Parse TenSEAL bytes, checked field by field first; any failure is CiphertextError.

    TenSEAL/SEAL are only handed bytes whose every field was checked here (see
    `he_wire.check_payload`): no unknown protobuf field, no oversized frame, no
    decompression beyond one fresh ciphertext's exact size, NTT form and level right.
    """
    try:
        check_payload(payload, shape)
    except WireError as err:
        raise CiphertextError(f"ciphertext {index} is malformed: {err}") from err
    try:
        return ts.ckks_vector_from(ctx, payload)
    except Exception as err:  # TenSEAL raises ValueError, RuntimeError, TypeError
        raise CiphertextError(
            f"ciphertext {index} cannot be read under this context ({err}): "
            "truncated or corrupted bytes, or other encryption parameters"
        ) from err


def _check_vector(
    ctx: ts.Context, vector: ts.CKKSVector, index: int, size: tuple[int, int]
) -> None:
    """Check a parsed vector is one fresh ciphertext of the right size and scale."""
    parts = vector.ciphertext()
    if not size[0] <= vector.size() <= size[1] or len(parts) != 1:
        raise CiphertextError(
            f"ciphertext {index} holds {vector.size()} values in {len(parts)} parts, "
            f"expected {size[0]}..{size[1]} values in 1 part"
        )
    seal = ctx.seal_context().data
    part = parts[0]
    fresh = part.parms_id() == seal.first_parms_id() and part.is_ntt_form()
    if part.size() != 2 or not fresh:
        raise CiphertextError(
            f"ciphertext {index} is not a fresh ciphertext (level or degree differ); "
            "clients must send unmodified encrypt_update output"
        )
    if part.scale != ctx.global_scale or part.is_transparent():
        raise CiphertextError(
            f"ciphertext {index} has scale 2^{math.log2(part.scale):.1f}, expected "
            f"2^{math.log2(ctx.global_scale):.1f} (or is transparent)"
        )


def serialize_vectors(
    vectors: Sequence[ts.CKKSVector], *, fingerprint: str | None = None
) -> list[bytes]:
    """Frame and serialize vectors (e.g. the server's encrypted sum) for the wire."""
    if not vectors:
        return []
    digest = _digest(vectors[0].context(), fingerprint)
    return [_frame(vector.serialize(), digest) for vector in vectors]


def bytes_per_parameter(blobs: Sequence[bytes], num_params: int) -> float:
    """Wire bytes per model parameter (fp32 plaintext is 4)."""
    if num_params < 1:
        raise EncodingError(f"num_params must be positive, got {num_params}")
    return sum(len(blob) for blob in blobs) / num_params
