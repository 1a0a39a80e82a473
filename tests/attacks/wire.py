"""Hand-made ciphertext bytes an attacker can send: re-framed, re-compressed, inflated.

The frame checksum and fingerprint are unkeyed, so an attacker recomputes them after
any change; these helpers do what such an attacker would.
"""

import struct

import zstandard

from fedsim.privacy import he

_SEAL_HEADER = struct.Struct("<HBBBBHQ")


def frame(payload: bytes, fingerprint: str) -> bytes:
    """A correctly framed (magic, version, fingerprint, checksum) payload."""
    return he._frame(payload, bytes.fromhex(fingerprint))


def payload_of(blob: bytes) -> bytes:
    return blob[he._FRAME_HEADER:]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def proto_field(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def split_proto(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(sizes field, ciphertext bytes, scale field) of a TenSEAL CKKSVectorProto."""
    at, raw, ciphertext = 0, {}, b""
    while at < len(payload):
        start = at
        key, at = _read_varint(payload, at)
        if key & 7 == 1:
            at += 8
        else:
            length, at = _read_varint(payload, at)
            if key >> 3 == 2:
                ciphertext = payload[at : at + length]
            at += length
        raw[key >> 3] = payload[start:at]
    return raw[1], ciphertext, raw[3]


def seal_object(body: bytes, compr: int = 2) -> bytes:
    return _SEAL_HEADER.pack(0xA15E, 16, 4, 3, compr, 0, 16 + len(body)) + body


def inflate(payload: bytes) -> bytes:
    """The decompressed ciphertext members of a TenSEAL payload."""
    _, seal, _ = split_proto(payload)
    return zstandard.ZstdDecompressor().decompress(seal[16:])


def with_members(payload: bytes, members: bytes) -> bytes:
    """The payload with its ciphertext members replaced (re-compressed as SEAL does)."""
    sizes, _, scale = split_proto(payload)
    body = zstandard.ZstdCompressor(write_content_size=True).compress(members)
    return sizes + proto_field(2, seal_object(body)) + scale


def with_seal(payload: bytes, seal: bytes) -> bytes:
    sizes, _, scale = split_proto(payload)
    return sizes + proto_field(2, seal) + scale


def zstd_bomb(megabytes: int, *, declare: int | None = None) -> bytes:
    """A small zstd stream that inflates to `megabytes` MiB of zeros."""
    chunk = bytes(1 << 20)
    if declare is None:
        compressor = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join([*(compressor.compress(chunk) for _ in range(megabytes)),
                         compressor.flush()])
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    return compressor.compress(bytes(declare))


def scale_field(scale: float) -> bytes:
    return varint(3 << 3 | 1) + struct.pack("<d", scale)


def forge_payload(server_ctx, values: list[float]) -> bytes:
    """A ciphertext made from server.ctx alone: c0 = NTT(scale * m), c1 = NTT(1).

    It decrypts to m plus the (small) secret key over the scale: the forgery of
    finding 1, for which no key is needed.
    """
    from tenseal import sealapi

    seal = server_ctx.seal_context().data
    data = seal.first_context_data()
    degree = data.parms().poly_modulus_degree()
    primes = data.chain_index() + 1
    plain = sealapi.Plaintext()
    sealapi.CKKSEncoder(seal).encode(list(values), server_ctx.global_scale, plain)
    words = degree * primes
    c0 = struct.pack(f"<{words}Q", *(plain.data(i) for i in range(words)))
    c1 = struct.pack(f"<{words}Q", *([1] * words))
    array = struct.pack("<Q", 2 * words) + c0 + c1
    parms = b"".join(int(w).to_bytes(8, "little") for w in seal.first_parms_id())
    members = (struct.pack("<32sBQQQdQ", parms, 1, 2, degree, primes,
                           server_ctx.global_scale, 1)
               + _SEAL_HEADER.pack(0xA15E, 16, 4, 3, 0, 0, 16 + len(array)) + array)
    body = zstandard.ZstdCompressor(write_content_size=True).compress(members)
    return (proto_field(1, varint(len(values))) + proto_field(2, seal_object(body))
            + scale_field(server_ctx.global_scale))
