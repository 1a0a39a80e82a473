"""The HE codec: the server adds CKKS ciphertexts it cannot read.

It holds only the server's TenSEAL context: parameters, no secret key (and, for the
symmetric key sets `fedsim keys init` provisions, no public key either). Each
reply's ciphertexts are checked (key fingerprint, vector count, decodable bytes)
before entering the sum; the encrypted sum and the total weight go back to the
clients, who decrypt and divide.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message

from fedsim import protocol
from fedsim.privacy.he import CiphertextError, load_ciphertexts, serialize_vectors
from fedsim.protocol import ciphertext_blobs, encrypted_record, is_encrypted
from fedsim.server.aggregate import Accumulator
from fedsim.server.codecs import Rejected


class HECodec:
    """Secure aggregation: sum ciphertexts, never decrypt."""

    name = "ckks"
    readable = False

    def accumulator(self) -> Accumulator:
        """Ciphertext addition is exact modular arithmetic: order does not matter."""
        return Accumulator()

    def __init__(self, *, public_context, fingerprint: str, expected_count: int) -> None:
        if public_context.is_private():
            raise ValueError("the server's HE context must not hold a secret key")
        self.context = public_context
        self.fingerprint = fingerprint
        self.expected_count = expected_count

    def contribution(self, msg: Message, global_arrays: ArrayRecord, weight: float) -> list:
        """Deserialize and check one client's ciphertexts (already weight-scaled)."""
        he = msg.content.config_records.get(protocol.HE_CONFIG)
        sent = None if he is None else he.get(protocol.HE_FINGERPRINT)
        if sent != self.fingerprint:
            raise Rejected(
                f"ciphertexts made under key {str(sent)[:16]}, the run's key is "
                f"{self.fingerprint[:16]} (fingerprint mismatch)"
            )
        record = msg.content.array_records.get(protocol.ARRAYS)
        if record is None or not is_encrypted(record):
            raise Rejected("reply carries no ciphertexts in an encrypted run")
        try:
            return load_ciphertexts(self.context, ciphertext_blobs(record),
                                    expected_count=self.expected_count,
                                    fingerprint=self.fingerprint)
        except CiphertextError as err:
            raise Rejected(str(err)) from err

    def finish(self, acc: Accumulator, global_arrays: ArrayRecord) -> ArrayRecord:
        """The encrypted sum plus the total weight the clients divide by."""
        return encrypted_record(
            serialize_vectors(acc.total, fingerprint=self.fingerprint), acc.weight)
