"""HE key provisioning: keys are provisioned, never improvised.

`provision` writes two files:

- ``client.key``: the CKKS context *with* its secret key, encrypted at rest with
  AES-256-GCM under a key derived from a passphrase by scrypt (random salt and
  nonce); mode 0600. Only clients get it (the passphrase travels separately).
- ``server.ctx``: the aggregator's context: the encryption parameters and no key at
  all. Clients encrypt with the secret key (symmetric CKKS), so no public key
  exists: the server can add ciphertexts but cannot read one. It *can* build
  ciphertexts of its own from the parameters alone; what it cannot make is one that
  clients accept, because clients verify secret tags keyed by HKDF of this file's
  decrypted payload (`he_tag.tag_secret`), which server.ctx does not hold.

Both share one layout: ``MAGIC``, a 4-byte big-endian header length, a JSON header,
then the payload. The header names the file kind, format version, parameter set,
the key set's random id and its fingerprint, SHA-256(key id || server context); for
the client key it also holds the KDF parameters, salt and nonce. The whole prefix
(magic, length, header) is the AEAD's associated data, so editing any header field
of client.key makes decryption fail.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import tenseal as ts
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedsim.errors import ConfigError
from fedsim.privacy.files import atomic_write_bytes
from fedsim.privacy.he import (
    ContextError,
    HEError,
    HEParams,
    capacity,
    create_context,
    fingerprint,
    is_symmetric,
    load_public_context,
    load_secret_context,
    public_context_bytes,
    secret_context_bytes,
    slot_count,
)
from fedsim.privacy.he_tag import tag_secret

MAGIC = b"FEDSIM-HE\n"
FORMAT_VERSION = 2  # 2: symmetric-key contexts and a random key id
_KEY_ID_BYTES = 16  # the key set's random id, hashed into its fingerprint
CLIENT_KEY_NAME = "client.key"
SERVER_CONTEXT_NAME = "server.ctx"
CLIENT_KIND = "client-secret-context"
SERVER_KIND = "server-public-context"
PASSPHRASE_ENV = "FEDSIM_HE_PASSPHRASE"
_CIPHER = "AES-256-GCM"
_HEADER_LIMIT = 64 * 1024
KEY_FILE_LIMIT = 16 * 1024 * 1024  # a default-set client.key is ~0.3 MiB
_LENGTH_BYTES = 4


class KeyFileError(HEError):
    """A key file is missing, malformed, of the wrong kind, or does not match."""


class PassphraseError(HEError):
    """No usable passphrase was given (missing, empty, or not confirmed)."""


@dataclass(frozen=True, kw_only=True)
class ScryptParams:
    """scrypt work factors: n = 2**log2_n; memory is 128 * r * n bytes (32 MiB)."""

    log2_n: int = 15
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Refuse factors outside sane bounds (a forged header could ask for TiBs)."""
        if not (14 <= self.log2_n <= 18 and 1 <= self.r <= 8 and 1 <= self.p <= 4):
            raise KeyFileError(
                f"scrypt parameters log2_n={self.log2_n} r={self.r} p={self.p} are "
                "outside 14..18, 1..8, 1..4; the key file is corrupted or forged"
            )

    def derive(self, passphrase: str, salt: bytes) -> bytes:
        """Derive a 256-bit key from the passphrase."""
        self.check()
        kdf = Scrypt(salt=salt, length=32, n=2**self.log2_n, r=self.r, p=self.p)
        return kdf.derive(passphrase.encode("utf-8"))


@dataclass(frozen=True, kw_only=True)
class ProvisionedKeys:
    """Where `provision` wrote the key files, and the key set's fingerprint."""

    client_key_path: Path
    server_context_path: Path
    fingerprint: str
    params_name: str


class ServerContext(NamedTuple):
    """The server's public context and the parameter set it was made with."""

    context: ts.Context
    params: HEParams


@dataclass(frozen=True, kw_only=True)
class KeyFile:
    """A parsed key file: its header, the bytes the AEAD authenticates, payload."""

    header: dict[str, Any]
    prefix: bytes
    payload: bytes


# --- container ------------------------------------------------------------------


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    """Lay out magic, header length, canonical JSON header, then the payload."""
    return _prefix(header) + payload


def _prefix(header: dict[str, Any]) -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + len(text).to_bytes(_LENGTH_BYTES, "big") + text


def unpack(data: bytes, *, source: str) -> KeyFile:
    """Parse a key file's bytes; `source` names it in errors."""
    if not data.startswith(MAGIC):
        raise KeyFileError(f"{source} is not a fedsim HE key file (bad magic)")
    start = len(MAGIC) + _LENGTH_BYTES
    length = int.from_bytes(data[len(MAGIC) : start], "big")
    if length > _HEADER_LIMIT or start + length > len(data):
        raise KeyFileError(f"{source} is truncated or corrupted (header length)")
    try:
        header = json.loads(data[start : start + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise KeyFileError(f"{source} has a corrupted header ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        found = header.get("format") if isinstance(header, dict) else None
        raise KeyFileError(
            f"{source} has format {found}, this fedsim reads format "
            f"{FORMAT_VERSION}; re-provision with `fedsim keys init`"
        )
    return KeyFile(
        header=header, prefix=data[: start + length], payload=data[start + length :]
    )


def read_regular(path: Path, limit: int) -> bytes:
    """Read a regular file of at most `limit` bytes; never a device, FIFO or socket.

    Opened non-blocking (a FIFO cannot hang the open) and checked with fstat before
    any byte is read, so /dev/zero or a pipe costs nothing.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def _read(path: Path, kind: str) -> KeyFile:
    """Read and parse a key file, requiring the given kind."""
    try:
        data = read_regular(path, KEY_FILE_LIMIT)
    except OSError as err:
        raise KeyFileError(f"cannot read key file {path}: {err.strerror}") from err
    parsed = unpack(data, source=str(path))
    found = parsed.header.get("kind")
    if found != kind:
        hint = {
            CLIENT_KIND: "clients load client.key",
            SERVER_KIND: "the server loads server.ctx",
        }[kind]
        raise KeyFileError(f"{path} holds a {found}, expected a {kind}; {hint}")
    return parsed


# --- provisioning ---------------------------------------------------------------


def provision(
    out_dir: str | Path,
    *,
    params: HEParams,
    passphrase: str,
    overwrite: bool = False,
    kdf: ScryptParams | None = None,
) -> ProvisionedKeys:
    """Create a key set and write client.key (encrypted, 0600) and server.ctx.

    `kdf` sets the scrypt work factors (default n=2^15, r=8, p=1: 32 MiB, ~0.1 s);
    they are stored in the header, so loading needs no settings.
    """
    _check_passphrase(passphrase)
    kdf = kdf or ScryptParams()
    kdf.check()
    out = Path(out_dir)
    client_path, server_path = out / CLIENT_KEY_NAME, out / SERVER_CONTEXT_NAME
    existing = [str(p) for p in (client_path, server_path) if p.exists()]
    if existing and not overwrite:
        raise KeyFileError(
            f"{', '.join(existing)} already exist; pass --force to replace them "
            "(clients holding the old key can then no longer decrypt)"
        )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx = create_context(params, symmetric=True)
    public = public_context_bytes(ctx)
    key_id = os.urandom(_KEY_ID_BYTES)
    fp = fingerprint(public, key_id)
    common = {
        "format": FORMAT_VERSION,
        "params": _params_fields(params),
        "key_id": key_id.hex(),
        "fingerprint": fp,
    }
    sealed = _seal(secret_context_bytes(ctx), common, passphrase, kdf)
    atomic_write_bytes(client_path, sealed, mode=0o600)
    server_header = common | {"kind": SERVER_KIND, "secret_key": False}
    atomic_write_bytes(server_path, pack(server_header, public), mode=0o644)
    return ProvisionedKeys(
        client_key_path=client_path,
        server_context_path=server_path,
        fingerprint=fp,
        params_name=params.name,
    )


def _seal(secret: bytes, common: dict, passphrase: str, kdf: ScryptParams) -> bytes:
    """Encrypt the secret context; the header (prefix) is authenticated data."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = common | {
        "kind": CLIENT_KIND,
        "secret_key": True,
        "cipher": _CIPHER,
        "kdf": {"name": "scrypt", "log2_n": kdf.log2_n, "r": kdf.r, "p": kdf.p},
        "salt": salt.hex(),
        "nonce": nonce.hex(),
    }
    prefix = _prefix(header)
    key = kdf.derive(passphrase, salt)
    return prefix + AESGCM(key).encrypt(nonce, secret, prefix)


# --- loading --------------------------------------------------------------------


class ClientKeySet(NamedTuple):
    """What a client holds: the secret context, the tag secret, the set's fingerprint."""

    context: ts.Context
    tag_secret: bytes
    fingerprint: str


def load_client_context(
    path: str | Path, passphrase: str, *, expect_fingerprint: str | None = None
) -> ts.Context:
    """Decrypt client.key into the secret context, checked against a fingerprint."""
    return load_client_keys(path, passphrase, expect_fingerprint=expect_fingerprint).context


def load_client_keys(
    path: str | Path, passphrase: str, *, expect_fingerprint: str | None = None
) -> ClientKeySet:
    """Decrypt client.key: the secret context and the tag secret derived from it.

    The tag secret is HKDF of the decrypted payload, which only passphrase holders can
    read (server.ctx holds neither); see `he_tag`. `path` is read with a size cap and
    only if it is a regular file (no device, FIFO or socket).
    """
    _check_passphrase(passphrase)
    parsed = _read(Path(path), CLIENT_KIND)
    _match_fingerprint(path, parsed.header.get("fingerprint"), expect_fingerprint)
    secret = _open(parsed, passphrase, source=str(path))
    try:
        ctx = load_secret_context(secret)
    except ContextError as err:
        raise KeyFileError(f"{path}: {err}") from err
    _header_params(parsed, ctx, str(path))
    if not is_symmetric(ctx):
        raise KeyFileError(
            f"{path} holds a public-key context; this fedsim provisions symmetric-key "
            "sets: re-provision with `fedsim keys init`"
        )
    # The header (fingerprint included) is the AEAD's associated data: it is bound
    # to this secret key as written by `provision`.
    return ClientKeySet(context=ctx, tag_secret=tag_secret(secret),
                        fingerprint=str(parsed.header.get("fingerprint")))


def _open(parsed: KeyFile, passphrase: str, *, source: str) -> bytes:
    """Derive the key from the header's KDF settings and decrypt the payload."""
    header = parsed.header
    try:
        kdf_fields = header["kdf"]
        kdf = ScryptParams(
            log2_n=int(kdf_fields["log2_n"]),
            r=int(kdf_fields["r"]),
            p=int(kdf_fields["p"]),
        )
        salt, nonce = bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce"])
    except (KeyError, TypeError, ValueError) as err:
        raise KeyFileError(f"{source} has a corrupted header ({err!r})") from err
    if header.get("cipher") != _CIPHER or kdf_fields.get("name") != "scrypt":
        raise KeyFileError(f"{source} uses an unknown cipher or KDF; re-provision")
    try:
        key = kdf.derive(passphrase, salt)
        return AESGCM(key).decrypt(nonce, parsed.payload, parsed.prefix)
    except (InvalidTag, ValueError) as err:
        raise KeyFileError(f"wrong passphrase or corrupted key file: {source}") from err


def load_server_context(
    path: str | Path, *, expect_fingerprint: str | None = None
) -> ServerContext:
    """Load server.ctx: the public context (a secret key is refused) and its params."""
    parsed = _read(Path(path), SERVER_KIND)
    stated = parsed.header.get("fingerprint")
    actual = fingerprint(parsed.payload, _key_id(parsed, str(path)))
    if actual != stated:
        raise KeyFileError(
            f"{path} is corrupted: its context hashes to {actual}, "
            f"its header says {stated}"
        )
    _match_fingerprint(path, actual, expect_fingerprint)
    try:
        ctx = load_public_context(parsed.payload)
    except ContextError as err:
        raise KeyFileError(f"{path}: {err}") from err
    return ServerContext(context=ctx, params=_header_params(parsed, ctx, str(path)))


def _key_id(parsed: KeyFile, source: str) -> bytes:
    """The key set's random id from a header."""
    try:
        key_id = bytes.fromhex(parsed.header["key_id"])
    except (KeyError, TypeError, ValueError) as err:
        raise KeyFileError(f"{source} has a corrupted header (key_id: {err!r})") from err
    if len(key_id) != _KEY_ID_BYTES:
        raise KeyFileError(
            f"{source} has a corrupted header (key_id is not {_KEY_ID_BYTES} bytes)")
    return key_id


def _params_fields(params: HEParams) -> dict[str, Any]:
    """Describe a parameter set in full for a header (custom sets load too)."""
    return {
        "name": params.name,
        "poly_modulus_degree": params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
        "global_scale_bits": params.global_scale_bits,
    }


def _header_params(parsed: KeyFile, ctx: ts.Context, source: str) -> HEParams:
    """Return the parameter set the header describes, checked against the context."""
    fields = parsed.header.get("params")
    try:
        params = HEParams(
            name=str(fields["name"]),
            poly_modulus_degree=int(fields["poly_modulus_degree"]),
            coeff_mod_bit_sizes=tuple(int(b) for b in fields["coeff_mod_bit_sizes"]),
            global_scale_bits=int(fields["global_scale_bits"]),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise KeyFileError(f"{source} has a corrupted parameter set ({err})") from err
    same = (
        slot_count(ctx) == params.slots
        and ctx.global_scale == 2.0**params.global_scale_bits
        and capacity(ctx) == params.max_abs_sum
    )
    if not same:
        raise KeyFileError(
            f"{source} says parameter set '{params.name}' but its context differs; "
            "the file is corrupted, re-provision with `fedsim keys init`"
        )
    return params


def _match_fingerprint(path: str | Path, actual: object, expected: str | None) -> None:
    """Refuse a key set other than the one the run expects."""
    if expected is not None and actual != expected:
        raise KeyFileError(
            f"{path} holds key set {actual}, but this run expects {expected}; "
            "use the key files provisioned for this run"
        )


def key_info(path: str | Path) -> dict[str, Any]:
    """Describe a key file without its passphrase (a server.ctx is also opened)."""
    source = Path(path)
    try:
        parsed = unpack(source.read_bytes(), source=str(source))
    except OSError as err:
        raise KeyFileError(f"cannot read key file {source}: {err.strerror}") from err
    header = parsed.header
    info: dict[str, Any] = {
        "path": str(source),
        "kind": header.get("kind"),
        "format": header.get("format"),
        "params": _params_name(header.get("params")),
        "fingerprint": header.get("fingerprint"),
        "secret_key": header.get("kind") == CLIENT_KIND,
        "encrypted": "cipher" in header,
        "size_bytes": source.stat().st_size,
        "mode": oct(source.stat().st_mode & 0o777),
    }
    if info["encrypted"]:
        kdf = header.get("kdf", {})
        info["protection"] = (
            f"{header.get('cipher')}, scrypt n=2^{kdf.get('log2_n')} "
            f"r={kdf.get('r')} p={kdf.get('p')}"
        )
    else:
        info["secret_key"] = _holds_secret_key(parsed.payload)
    return info


def _holds_secret_key(payload: bytes) -> bool:
    """Tell whether plain context bytes hold a secret key (unreadable: no)."""
    try:
        return ts.context_from(payload).is_private()
    except Exception:  # noqa: BLE001 - TenSEAL raises several types on bad bytes
        return False


def _params_name(fields: object) -> object:
    """Return the parameter set's name from a header field (as is if malformed)."""
    return fields.get("name") if isinstance(fields, dict) else fields


# --- passphrase -----------------------------------------------------------------


def _check_passphrase(passphrase: str) -> None:
    if not isinstance(passphrase, str) or not passphrase:
        raise PassphraseError("an empty passphrase is refused; choose a non-empty one")


def read_passphrase(
    env_var: str = PASSPHRASE_ENV,
    prompt: bool = True,
    *,
    confirm: bool = False,
    ask: Callable[[str], str] = getpass.getpass,
) -> str:
    """Read the passphrase from `env_var`, else a hidden prompt (twice to confirm).

    Never a command-line flag: flags end up in shell history and process lists.
    """
    value = os.environ.get(env_var)
    if value is not None:
        if not value:
            raise PassphraseError(
                f"{env_var} is set but empty; set a non-empty passphrase or unset it "
                "to be prompted"
            )
        return value
    if not prompt:
        raise PassphraseError(f"no passphrase: set {env_var} (flags are never read)")
    first = ask("HE key passphrase: ")
    _check_passphrase(first)
    if confirm and ask("Repeat the passphrase: ") != first:
        raise PassphraseError("the two passphrases differ; run the command again")
    return first
