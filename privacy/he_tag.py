"""Authenticated secure aggregation: a secret linear tag that clients check after decrypting.

The server holds no key, yet it can still build RLWE ciphertexts of its own
(c0 = NTT(scale*m), c1 = NTT(1) decrypts to m plus the small secret over the scale),
add plaintexts to a sum, multiply ciphertexts by any integer polynomial (slot by
slot), drop, repeat or replay contributions, and pick the total weight it announces.
What it cannot do without the clients' secret is compute a linear function it does
not know. So every contribution carries, in encrypted slots of its own, tags under a
key only clients can derive; a global is decrypted and accepted only if its tags are
the same linear function of its decrypted content.

Slot layout of one contribution (`Layout`), then packed into ciphertexts as before:

    [ w * clip(update, B) | w * B | PRESENCE at this client's id, 0 elsewhere | tags ]
      num_params values     weight  num_clients values                        TAG_SLOTS

with ``tag_j = <k_j, x> / s`` over every slot x before the tags. The key rows
k_j (uniform on [-sqrt 3, sqrt 3] in steps of 2^-32 of the range, a ChaCha20 stream
under an HKDF-SHA256 key) are
derived from the key set's tag secret (HKDF of the decrypted client.key payload,
which server.ctx does not hold) and bound to the run id, the round, the hash of
the global the contribution was trained on, and the layout. Tags are linear, so
the honest sum of this round's contributions carries exactly the sum's tags.

What a client checks on a global (`open_sum`), in order, before using it:
1. every tag within `tolerance` of ``<k_j, x'> / s`` for the decrypted x';
2. every presence slot 0 or PRESENCE (within a quarter), at least `min_contributors`
   of them set: each distinct client at most once, no scaling, no negation;
3. the weight slot's total weight W matches what the server announced, and
   W x B stays below the parameter set's capacity (no slot can have wrapped).

Soundness (see README's threat model): the server sees only ciphertexts, so whatever
it sends decrypts to  sum_j p_j * x_j + b + noise  for genuine contributions x_j and
server-chosen slot multipliers p_j and offset b, all chosen without knowledge of k.
Tag j's check is then an affine function of the secret row k_j with coefficients
d; whenever the accepted content differs from an integer combination of this
round's contributions by d with max |d_i| >= delta, a uniform k_j makes the check
pass with probability at most tolerance * s / (sqrt(3) * delta) + 2^-32, and the
TAG_SLOTS rows are independent: `forgery_bound` computes the bound. Integer
combinations of this round's genuine contributions (made on the same global)
pass the tags; the presence slots then leave exactly "the sum of a set of distinct
clients' contributions", which the server chooses (it may drop any).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsim.privacy.he import (
    EncodingError,
    HEError,
    capacity,
    decrypt_flat,
    encrypt_flat,
    secret_context_bytes,
    split_arrays,
)

TAG_SLOTS = 128  # independent tag rows (each one slot); see README on adaptive servers
CLIP_BOUND = 16.0  # B: clients clip every value of their update to [-B, B]
PRESENCE = 256.0  # a contributor's mark in its own presence slot
MIN_CONTRIBUTORS = 2  # a client's default floor of distinct contributors in a sum
MAX_CLIENTS = 100_000  # presence slots a layout may ask for (a server's word, bounded)
_KEY_HALF_RANGE = math.sqrt(3.0)  # key entries uniform on [-sqrt 3, sqrt 3]: variance 1
_NORM = 21.0  # s = 21 sqrt(m): a sum's tags stay under its largest slot, P > 1 - 2^-100
_TOLERANCE_BITS = 18  # tolerance = 2^18 / scale: far above the noise of 1000 clients
_CHUNK = 4096  # key columns generated at a time (memory stays flat)
_KEY_BITS = 32  # each key entry: one of 2^32 evenly spaced values


class TagError(HEError):
    """A global is not this round's sum of genuine contributions: refuse it."""

    # What the server is told (the detail stays in the site's log): a number such as
    # the tag deviation would let it learn the secret tag key query by query.
    public_reason = "the global was refused (details in the site's log)"


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Where each part of a contribution sits in the slot vector."""

    num_params: int
    num_clients: int
    tags: int = TAG_SLOTS

    def __post_init__(self) -> None:
        if self.num_params < 1 or self.tags < 1 or not 1 <= self.num_clients <= MAX_CLIENTS:
            raise EncodingError(f"impossible slot layout {self} (at most {MAX_CLIENTS} "
                                "clients)")

    @property
    def tagged(self) -> int:
        """Slots the tags cover: update, weight and presence."""
        return self.num_params + 1 + self.num_clients

    @property
    def total(self) -> int:
        """All slots of one contribution."""
        return self.tagged + self.tags

    @property
    def norm(self) -> float:
        """The tags' divisor s."""
        return _NORM * math.sqrt(self.tagged)

    def describe(self) -> dict:
        """The layout as bound into the tag key."""
        return {"params": self.num_params, "clients": self.num_clients, "tags": self.tags}


@dataclass(frozen=True, kw_only=True)
class Binding:
    """What a round's tag key is bound to."""

    run_id: str
    round: int
    basis: bytes  # SHA-256 of the global the contributions were trained on

    def describe(self) -> dict:
        """The binding as bound into the tag key."""
        return {"run": self.run_id, "round": self.round, "basis": self.basis.hex()}


def tag_secret(secret_payload: bytes) -> bytes:
    """The key set's tag secret: HKDF of the decrypted client.key payload."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fedsim-he-tag-secret-v1",
                info=b"tag secret").derive(secret_payload)


def _stream_key(secret: bytes, binding: Binding, layout: Layout) -> bytes:
    info = json.dumps({"binding": binding.describe(), "layout": layout.describe()},
                      sort_keys=True).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fedsim-he-tag-v1",
                info=info).derive(secret)


def tags_of(x: np.ndarray, secret: bytes, binding: Binding, layout: Layout) -> np.ndarray:
    """``<k_j, x> / s`` for every tag row j, the key streamed in column chunks."""
    if x.shape != (layout.tagged,):
        raise EncodingError(f"tagged part has {x.shape} values, expected {layout.tagged}")
    stream = Cipher(algorithms.ChaCha20(_stream_key(secret, binding, layout), bytes(16)),
                    mode=None).encryptor()
    # k = w * (2h / 2^32) - h for the stream's words w, so <k, x> is
    # (2h / 2^32) <w, x> - h sum(x): one pass over the words instead of three.
    out = np.zeros(layout.tags)
    for start in range(0, layout.tagged, _CHUNK):
        part = x[start : start + _CHUNK]
        words = np.frombuffer(stream.update(bytes(4 * layout.tags * part.size)), np.uint32)
        out += words.astype(np.float64).reshape(layout.tags, -1) @ part
    out = out * (2 * _KEY_HALF_RANGE * 2.0**-_KEY_BITS) - _KEY_HALF_RANGE * float(np.sum(x))
    return out / layout.norm


def contribution_vector(flat: np.ndarray, weight: float, client_id: int, *, secret: bytes,
                        binding: Binding, layout: Layout) -> tuple[np.ndarray, int]:
    """Clip to [-B, B], weight, mark presence, append the tags; also the clipped count."""
    if flat.shape != (layout.num_params,):
        raise EncodingError(f"update has {flat.size} values, the layout {layout.num_params}")
    if not 0 <= client_id < layout.num_clients:
        raise EncodingError(f"client id {client_id} is outside 0..{layout.num_clients - 1} "
                            "of the run's layout")
    if not math.isfinite(weight) or weight <= 0 or not np.all(np.isfinite(flat)):
        raise EncodingError("the update must be finite with a positive finite weight")
    clipped = np.clip(flat, -CLIP_BOUND, CLIP_BOUND)
    presence = np.zeros(layout.num_clients)
    presence[client_id] = PRESENCE
    x = np.concatenate([clipped * weight, [weight * CLIP_BOUND], presence])
    tags = tags_of(x, secret, binding, layout)
    return np.concatenate([x, tags]), int(np.count_nonzero(clipped != flat))


@dataclass(frozen=True, kw_only=True)
class OpenedSum:
    """A verified global: the average update, its total weight and who contributed."""

    average: np.ndarray
    total_weight: float
    contributors: tuple[int, ...]


def tolerance(scale_bits: int) -> float:
    """The largest tag deviation accepted under a parameter set's scale."""
    return 2.0 ** (_TOLERANCE_BITS - scale_bits)


def open_sum(decrypted: np.ndarray, *, secret: bytes, binding: Binding, layout: Layout,
             scale_bits: int, capacity: float, announced_weight: float,
             min_contributors: int) -> OpenedSum:
    """Check a decrypted sum against its tags, presence and weight; raise TagError."""
    if decrypted.shape != (layout.total,):
        raise TagError(f"the global holds {decrypted.size} values, expected {layout.total}")
    x, tags = decrypted[: layout.tagged], decrypted[layout.tagged :]
    if not np.all(np.isfinite(decrypted)):
        raise TagError("the global decrypts to non-finite values")
    off = float(np.max(np.abs(tags - tags_of(x, secret, binding, layout))))
    if off > tolerance(scale_bits):
        raise TagError(
            f"the global fails its tag check for round {binding.round} (off by {off:.3g}, "
            f"tolerance {tolerance(scale_bits):.3g}): it is not the sum of genuine "
            "contributions of that round on one global (forged, shifted, scaled, "
            "replayed or mixed by the server)")
    contributors = _contributors(x[layout.num_params + 1 :], min_contributors)
    weight = float(x[layout.num_params]) / CLIP_BOUND
    _check_weight(weight, announced_weight, capacity,
                  slack=tolerance(scale_bits) / CLIP_BOUND)
    average = x[: layout.num_params] / weight
    return OpenedSum(average=average, total_weight=weight, contributors=contributors)


def _contributors(presence: np.ndarray, floor: int) -> tuple[int, ...]:
    marks = presence / PRESENCE
    rounded = np.rint(marks)
    if np.any(np.abs(marks - rounded) > 0.25) or np.any((rounded != 0) & (rounded != 1)):
        raise TagError("the global's presence marks are not 0 or 1: a contribution was "
                       "repeated, scaled or negated")
    ids = tuple(int(i) for i in np.flatnonzero(rounded))
    if len(ids) < floor:
        raise TagError(f"the global sums {len(ids)} distinct contribution(s), this site "
                       f"requires at least {floor}")
    return ids


def _check_weight(weight: float, announced: float, limit: float, slack: float) -> None:
    if (not weight > 0 or not math.isfinite(announced)
            or abs(weight - announced) > slack + 1e-9 * abs(weight)):
        raise TagError(f"the announced total weight {announced:.6g} is not the summed "
                       f"weight {weight:.6g}")
    if weight * CLIP_BOUND >= limit:
        raise TagError(f"total weight {weight:.6g} x clip bound {CLIP_BOUND:g} reaches the "
                       f"parameter set's capacity {limit:.3g}: the sum may have wrapped")


def forgery_bound(layout: Layout, scale_bits: int, delta: float) -> float:
    """log2 of the probability that a change of max |d| >= delta passes every tag."""
    per_tag = (tolerance(scale_bits) * layout.norm / (_KEY_HALF_RANGE * delta)
               + 2.0**-_KEY_BITS)  # the key grid's granularity
    return layout.tags * math.log2(min(1.0, per_tag))


def global_basis(blobs: Sequence[bytes], metadata: Sequence[float | int | bytes]) -> bytes:
    """SHA-256 of an encrypted global as sent: every ciphertext and its metadata."""
    digest = hashlib.sha256(b"fedsim-he-global-v1")
    for part in (*blobs, *(repr(m).encode() for m in metadata)):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def initial_basis(model: dict, seed: int) -> bytes:
    """The basis of round 1: the seeded initial model, named by its spec and seed."""
    text = json.dumps({"model": model, "seed": seed}, sort_keys=True)
    return hashlib.sha256(b"fedsim-he-initial-v1" + text.encode()).digest()


# --- whole contributions and globals -------------------------------------------------


def seal_contribution(ctx: ts.Context, arrays: Sequence[np.ndarray], weight: float,
                      client_id: int, *, secret: bytes, binding: Binding, layout: Layout,
                      fingerprint: str | None = None) -> tuple[list[bytes], int]:
    """Clip, weight, tag and encrypt one client's update; also how many values clipped."""
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    vector, clipped = contribution_vector(flat, weight, client_id, secret=secret,
                                          binding=binding, layout=layout)
    return encrypt_flat(ctx, vector, fingerprint=fingerprint), clipped


def open_global(ctx: ts.Context, blobs: Sequence[bytes], *,
                shapes: Sequence[tuple[int, ...]], secret: bytes, binding: Binding,
                layout: Layout, announced_weight: float, min_contributors: int,
                fingerprint: str | None = None) -> tuple[list[np.ndarray], OpenedSum]:
    """Decrypt a global, verify it (`open_sum`) and cut the average into arrays."""
    flat = decrypt_flat(ctx, blobs, num_values=layout.total, fingerprint=fingerprint)
    opened = open_sum(flat, secret=secret, binding=binding, layout=layout,
                      scale_bits=round(math.log2(ctx.global_scale)), capacity=capacity(ctx),
                      announced_weight=announced_weight, min_contributors=min_contributors)
    return split_arrays(opened.average, shapes), opened


def context_tag_secret(ctx: ts.Context) -> bytes:
    """The tag secret of an in-memory secret context (key files use their payload)."""
    return tag_secret(secret_context_bytes(ctx))
