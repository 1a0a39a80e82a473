"""The HE codec: the server adds CKKS ciphertexts it cannot read, and checks what it can.

It holds only the server's TenSEAL context: parameters, no secret key (and, for the
symmetric key sets `fedsim keys init` provisions, no public key either). The server
cannot check a contribution's tags (only clients can, after decrypting); it checks
everything else before a reply enters the sum: the key fingerprint, that the reply
is tagged for this round and for the global this round sent, the record's exact
entries and sizes, every ciphertext field by field (`privacy.he_wire`), and that the
round's total weight x the clip bound stays below the parameter set's capacity
(replies beyond it are rejected, naming the set that would hold them). The
encrypted sum goes back with its total weight, its round and the hash of the global
its contributions were trained on: what clients need to verify it.
"""

from __future__ import annotations

import hashlib

from flwr.app import ArrayRecord, Message

from fedsim import protocol
from fedsim.errors import ConfigError
from fedsim.privacy.he import (
    PARAMETER_SETS,
    CiphertextError,
    capacity,
    load_ciphertexts,
    max_frame_bytes,
    serialize_vectors,
    slot_count,
)
from fedsim.privacy.he_tag import CLIP_BOUND, Layout, global_basis
from fedsim.protocol import encrypted_record, is_encrypted
from fedsim.server.aggregate import Accumulator
from fedsim.server.codecs import Rejected

_NPY_HEADER = 256  # numpy's .npy header around an array's bytes


class HECodec:
    """Secure aggregation: sum ciphertexts, never decrypt."""

    name = "ckks"
    readable = False

    def accumulator(self) -> Accumulator:
        """Ciphertext addition is exact modular arithmetic: order does not matter."""
        return Accumulator()

    def __init__(self, *, public_context, fingerprint: str, layout: Layout,
                 params_name: str, initial_basis: bytes) -> None:
        if public_context.is_private():
            raise ValueError("the server's HE context must not hold a secret key")
        self.context = public_context
        self.fingerprint = fingerprint
        self.layout = layout
        self.params_name = params_name
        self.initial_basis = initial_basis
        slots = slot_count(public_context)
        self.expected_count = -(-layout.total // slots)
        self.max_frame = max_frame_bytes(public_context)
        self.capacity = capacity(public_context)
        self.round, self.basis, self.admitted_weight = 0, initial_basis, 0.0
        self.seen: set[bytes] = set()  # this round's admitted ciphertexts, by hash

    def start_round(self, server_round: int, global_arrays: ArrayRecord) -> None:
        """Remember the round and the hash of the global this round sends out."""
        self.round, self.admitted_weight, self.seen = server_round, 0.0, set()
        if not is_encrypted(global_arrays):
            self.basis = self.initial_basis
            return
        try:
            total, sum_round, basis = protocol.sum_metadata(global_arrays)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError("the run's encrypted global carries no round and basis "
                              "(written by an older fedsim); start a new run") from err
        self.basis = global_basis(protocol.ciphertext_blobs(global_arrays),
                                  [total, sum_round, basis])

    def contribution(self, msg: Message, global_arrays: ArrayRecord, weight: float) -> list:
        """Check one client's ciphertexts (already weight-scaled) against this round."""
        self._check_binding(msg.content.config_records.get(protocol.HE_CONFIG))
        self._check_capacity(weight)
        record = msg.content.array_records.get(protocol.ARRAYS)
        if record is None or not is_encrypted(record):
            raise Rejected("reply carries no ciphertexts in an encrypted run")
        try:
            vectors = load_ciphertexts(self.context, self._blobs(record),
                                       expected_count=self.expected_count,
                                       num_params=self.layout.total,
                                       fingerprint=self.fingerprint)
        except CiphertextError as err:
            raise Rejected(str(err)) from err
        digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest()
                                         for b in self._blobs(record))).digest()
        if digest in self.seen:  # a replayed or copied reply: its client counted twice
            raise Rejected("the same ciphertexts as another reply of this round")
        self.seen.add(digest)
        self.admitted_weight += weight
        return vectors

    def _check_binding(self, he) -> None:
        sent = None if he is None else he.get(protocol.HE_FINGERPRINT)
        if sent != self.fingerprint:
            raise Rejected(
                f"ciphertexts made under key {str(sent)[:16]}, the run's key is "
                f"{self.fingerprint[:16]} (fingerprint mismatch)"
            )
        tagged_round, basis = he.get(protocol.HE_ROUND), he.get(protocol.HE_BASIS)
        if tagged_round != self.round or basis != self.basis.hex():
            raise Rejected(f"contribution tagged for round {tagged_round} on global "
                           f"{str(basis)[:16]}, this is round {self.round} on "
                           f"{self.basis.hex()[:16]}")

    def _check_capacity(self, weight: float) -> None:
        total = self.admitted_weight + weight
        if total * CLIP_BOUND < self.capacity:
            return
        fits = [p.name for p in PARAMETER_SETS.values() if total * CLIP_BOUND < p.max_abs_sum]
        hint = (f"provision keys with --params {fits[0]}" if fits else
                "no parameter set holds it: sample fewer clients per round")
        raise Rejected(f"the round's total weight would reach {total:.6g}; x clip bound "
                       f"{CLIP_BOUND:g} that exceeds the '{self.params_name}' set's capacity "
                       f"{self.capacity:.3g}; {hint}")

    def _blobs(self, record: ArrayRecord) -> list[bytes]:
        """The reply's ciphertext bytes: exactly the expected keys, each within the cap.

        Checked before any array is decoded, so an oversized or extra entry costs
        nothing beyond what the transport already holds.
        """
        expected = [protocol.ciphertext_key(i) for i in range(self.expected_count)]
        if list(record.keys()) != expected:
            raise Rejected(f"reply holds {len(record)} entries, expected the "
                           f"{self.expected_count} ciphertexts ct-00000.. in order")
        blobs = []
        for key in expected:
            array = record[key]
            if array.dtype != "uint8" or len(array.shape) != 1:
                raise Rejected(f"{key} is {array.dtype}{list(array.shape)}, not uint8 bytes")
            if len(array.data) > self.max_frame + _NPY_HEADER:
                raise Rejected(f"{key} is {len(array.data)} bytes, above the "
                               f"{self.max_frame} a ciphertext of this key set can take")
            blobs.append(array.numpy().tobytes())
        return blobs

    def finish(self, acc: Accumulator, global_arrays: ArrayRecord) -> ArrayRecord:
        """The encrypted sum plus its total weight, round and basis (clients verify)."""
        return encrypted_record(
            serialize_vectors(acc.total, fingerprint=self.fingerprint), acc.weight,
            sum_round=self.round, basis=self.basis)

