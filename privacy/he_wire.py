"""Strict reading of one serialized CKKS vector before TenSEAL or SEAL sees it.

TenSEAL parses whatever protobuf it is given (unknown fields of any size included)
and SEAL inflates a zstd stream without an output bound, trusting header fields
such as the NTT-form flag until an addition fails. A reply is input to check, so
every byte of a vector is accounted for here, against what one fresh ciphertext of
this context must look like:

- TenSEAL's ``CKKSVectorProto``: field 1 (chunk sizes), field 2 (exactly one SEAL
  ciphertext), field 3 (the scale); any other field, or a repeated one, is refused;
- SEAL's 16-byte header: magic, version 4.x, compression none or zstd, exact size;
- a zstd body is exactly one frame whose declared content size is the exact size of
  a fresh ciphertext (so inflating it is bounded by that size);
- the inflated ciphertext: parms id of the first (fresh) level, NTT form, 2
  polynomials, ring degree, number of primes, scale, correction factor 1, and a
  coefficient array of exactly 2 x N x primes words.

No Flower, no TenSEAL objects: bytes in, `WireError` (a ValueError) out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, 0, size
_COMPR_NONE, _COMPR_ZSTD = 0, 2
_CT_FIXED = struct.Struct("<32sBQQQdQ")  # parms id, NTT flag, size, N, primes, scale, cf
_ARRAY_COUNT = struct.Struct("<Q")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PROTO_SLACK = 64  # protobuf tags and lengths around the ciphertext


class WireError(ValueError):
    """Serialized vector bytes are not one fresh ciphertext of the expected context."""


@dataclass(frozen=True, kw_only=True)
class FreshShape:
    """What one fresh ciphertext of a context looks like on the wire."""

    parms_id: bytes  # 32 bytes: the four little-endian words of SEAL's parms id
    poly_modulus_degree: int
    primes: int  # data primes at the fresh level
    scale: float
    slots: int

    @property
    def words(self) -> int:
        """Coefficient words of a two-polynomial ciphertext."""
        return 2 * self.poly_modulus_degree * self.primes

    @property
    def inflated(self) -> int:
        """Exact size of the ciphertext's members once decompressed."""
        return _CT_FIXED.size + _SEAL_HEADER.size + _ARRAY_COUNT.size + 8 * self.words

    @property
    def max_payload(self) -> int:
        """The largest TenSEAL payload accepted (zstd's worst-case bound plus framing)."""
        body = self.inflated + self.inflated // 128 + 512
        return body + _SEAL_HEADER.size + _PROTO_SLACK + 10 * 4


def check_payload(payload: bytes, shape: FreshShape) -> None:
    """Raise WireError unless `payload` is one fresh ciphertext of `shape`."""
    if len(payload) > shape.max_payload:
        raise WireError(f"{len(payload)} bytes, more than the {shape.max_payload} a fresh "
                        "ciphertext of these parameters can take")
    sizes, seal, scale = _read_proto(payload)
    if len(sizes) != 1 or not 1 <= sizes[0] <= shape.slots:
        raise WireError(f"chunk sizes {sizes[:4]} are not one size of 1..{shape.slots}")
    if scale != shape.scale:
        raise WireError(f"vector scale {scale} is not the context's {shape.scale}")
    _check_fresh(_inflate(seal, shape), shape)


# --- protobuf -----------------------------------------------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if at >= len(data):
            raise WireError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at
    raise WireError("varint longer than 10 bytes")


def _read_proto(data: bytes) -> tuple[list[int], bytes, float]:
    """Fields 1 (packed sizes), 2 (one ciphertext), 3 (scale); nothing else."""
    fields: dict[int, object] = {}
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if number in fields:
            raise WireError(f"protobuf field {number} appears twice")
        if (number, kind) in ((1, 2), (2, 2)):
            length, at = _varint(data, at)
            if at + length > len(data):
                raise WireError(f"protobuf field {number} runs past the end")
            fields[number], at = data[at : at + length], at + length
        elif (number, kind) == (3, 1):
            if at + 8 > len(data):
                raise WireError("protobuf scale field is truncated")
            fields[3], at = struct.unpack_from("<d", data, at)[0], at + 8
        else:
            raise WireError(f"unexpected protobuf field {number} (wire type {kind})")
    if set(fields) != {1, 2, 3}:
        raise WireError(f"protobuf fields {sorted(fields)}, expected [1, 2, 3]")
    return _packed(fields[1]), bytes(fields[2]), float(fields[3])


def _packed(data: bytes) -> list[int]:
    values, at = [], 0
    while at < len(data):
        value, at = _varint(data, at)
        values.append(value)
    return values


# --- SEAL ------------------------------------------------------------------------


def _seal_header(data: bytes) -> tuple[int, int]:
    """Check a SEAL header; return (compression mode, body offset)."""
    if len(data) < _SEAL_HEADER.size:
        raise WireError("SEAL object shorter than its header")
    magic, size, major, _minor, compr, reserved, total = _SEAL_HEADER.unpack_from(data)
    if magic != SEAL_MAGIC or size != _SEAL_HEADER.size or major != 4 or reserved:
        raise WireError("not a SEAL 4 object (bad magic, header size or version)")
    if total != len(data):
        raise WireError(f"SEAL header says {total} bytes, the object has {len(data)}")
    if compr not in (_COMPR_NONE, _COMPR_ZSTD):
        raise WireError(f"SEAL compression mode {compr} is not none or zstd")
    return compr, _SEAL_HEADER.size


def _inflate(seal: bytes, shape: FreshShape) -> bytes:
    """The ciphertext members, never inflated beyond one fresh ciphertext's size."""
    compr, start = _seal_header(seal)
    body = seal[start:]
    if compr == _COMPR_NONE:
        if len(body) != shape.inflated:
            raise WireError(f"uncompressed ciphertext of {len(body)} bytes, expected "
                            f"{shape.inflated}")
        return body
    _check_zstd_frame(body, shape.inflated)
    try:
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=shape.inflated)
    except zstandard.ZstdError as err:
        raise WireError(f"zstd body does not decompress ({err})") from err
    if len(out) != shape.inflated:
        raise WireError(f"zstd body inflates to {len(out)} bytes, expected {shape.inflated}")
    return out


def _check_zstd_frame(body: bytes, inflated: int) -> None:
    """Exactly one zstd frame, declaring the exact inflated size, nothing after it."""
    if not body.startswith(_ZSTD_MAGIC):
        raise WireError("zstd body does not start with a zstd frame")
    try:
        params = zstandard.get_frame_parameters(body)
        at = zstandard.frame_header_size(body)
    except zstandard.ZstdError as err:
        raise WireError(f"bad zstd frame header ({err})") from err
    if params.content_size != inflated or params.dict_id:
        raise WireError(f"zstd frame declares {params.content_size} bytes (dictionary "
                        f"{params.dict_id}); a fresh ciphertext is {inflated}")
    last = False
    while not last:
        if at + 3 > len(body):
            raise WireError("zstd frame is truncated")
        header = int.from_bytes(body[at : at + 3], "little")
        last, kind, size = bool(header & 1), (header >> 1) & 3, header >> 3
        if kind == 3:
            raise WireError("zstd frame holds a reserved block type")
        at += 3 + (1 if kind == 1 else size)
    if params.has_checksum:
        at += 4
    if at != len(body):
        raise WireError(f"{len(body) - at} bytes after the zstd frame")


def _check_fresh(members: bytes, shape: FreshShape) -> None:
    """The inflated ciphertext: fresh level, NTT form, 2 polynomials, exact sizes."""
    parms, ntt, size, degree, primes, scale, factor = _CT_FIXED.unpack_from(members)
    problems = []
    if parms != shape.parms_id:
        problems.append("parms id is not the fresh level's")
    if ntt != 1:
        problems.append(f"NTT-form flag is {ntt}, expected 1")
    if (size, degree, primes) != (2, shape.poly_modulus_degree, shape.primes):
        problems.append(f"{size} polynomials of degree {degree} over {primes} primes, "
                        f"expected 2 of {shape.poly_modulus_degree} over {shape.primes}")
    if scale != shape.scale or factor != 1:
        problems.append(f"scale {scale} (correction factor {factor}), expected "
                        f"{shape.scale} (1)")
    if problems:
        raise WireError("; ".join(problems))
    array = members[_CT_FIXED.size :]
    compr, start = _seal_header(array)
    (count,) = _ARRAY_COUNT.unpack_from(array, start)
    if compr != _COMPR_NONE or count != shape.words:
        raise WireError(f"coefficient array of {count} words (compression {compr}), "
                        f"expected {shape.words} uncompressed")
