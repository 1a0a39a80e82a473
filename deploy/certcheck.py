"""Check a deployment's certificates and keys before the processes that use them.

Every problem is one line naming the file and the fix: a server certificate that a
different CA signed, one past its end date, one without the SuperLink's name, a key
that does not belong to its certificate, a site key Flower would refuse.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsim.deploy.pki import CertError, CertLayout

_FIX = "make a new set with `fedsim certs init --force`"


@dataclass(frozen=True, kw_only=True)
class ServerCertStatus:
    """What a valid server certificate says about itself."""

    subject: str
    names: tuple[str, ...]
    not_after: dt.datetime
    days_left: int


@dataclass(frozen=True, kw_only=True)
class NodeKeyStatus:
    """A site key Flower can load, and whether its public file matches."""

    name: str
    curve: str
    mode: str


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CertError(f"cannot read the {what} '{path}': {err.strerror}; "
                        "check the path") from err


def load_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    """A PEM certificate, or a CertError naming the file."""
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as err:
        raise CertError(f"the {what} '{path}' is not a PEM certificate; "
                        f"{_FIX}") from err


def load_key(path: Path, what: str = "private key"):
    """A PEM private key, or a CertError naming the file."""
    try:
        return serialization.load_pem_private_key(_read(path, what), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise CertError(f"the {what} '{path}' is not an unencrypted PEM private key; "
                        f"{_FIX}") from err


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses in a certificate's SAN extension."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _check_ca(ca: x509.Certificate, path: Path) -> None:
    try:
        basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise CertError(f"'{path}' is not a CA certificate (no CA basic constraint); "
                        "give the ca.crt that `fedsim certs init` wrote")


def _check_issued_by(cert: x509.Certificate, ca: x509.Certificate, cert_path: Path,
                     ca_path: Path) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise CertError(
            f"'{cert_path}' was not signed by the CA in '{ca_path}' (mismatched "
            f"certificate set); use the ca.crt made with it, or {_FIX}") from err


def _check_dates(cert: x509.Certificate, path: Path, now: dt.datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise CertError(f"'{path}' expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                        f"{_FIX}")
    if now < cert.not_valid_before_utc:
        raise CertError(f"'{path}' is not valid before "
                        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this "
                        "machine's clock")


def _matches(name: str, names: tuple[str, ...]) -> bool:
    try:
        return ipaddress.ip_address(name) in {ipaddress.ip_address(n) for n in names
                                              if _is_ip(n)}
    except ValueError:
        return name.lower().rstrip(".") in {n.lower() for n in names}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_key_pair(cert: x509.Certificate, key_path: Path) -> None:
    key = load_key(key_path, "server key")
    if key.public_key() != cert.public_key():
        raise CertError(f"the server key '{key_path}' does not belong to its "
                        f"certificate; keep server.crt and server.key of one set")


def check_server(*, ca_path: Path, cert_path: Path, key_path: Path | None = None,
                 name: str | None = None, now: dt.datetime | None = None
                 ) -> ServerCertStatus:
    """Verify a server certificate against its CA, dates, name and key."""
    now = now or dt.datetime.now(dt.UTC)
    ca = load_cert(ca_path, "CA certificate")
    cert = load_cert(cert_path, "server certificate")
    _check_ca(ca, ca_path)
    _check_dates(ca, ca_path, now)
    _check_issued_by(cert, ca, cert_path, ca_path)
    _check_dates(cert, cert_path, now)
    names = cert_names(cert)
    if name is not None and not _matches(name, names):
        raise CertError(f"'{cert_path}' is not valid for '{name}' (it names "
                        f"{', '.join(names) or 'nothing'}); "
                        f"`fedsim certs init --server-name {name} --force`")
    if key_path is not None:
        _check_key_pair(cert, key_path)
    left = (cert.not_valid_after_utc - now).days
    return ServerCertStatus(subject=cert.subject.rfc4514_string(), names=names,
                            not_after=cert.not_valid_after_utc, days_left=left)


def load_node_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A site key as `flower-supernode` loads it: OpenSSH format, NIST EC curve."""
    try:
        key = serialization.load_ssh_private_key(_read(path, "site key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise CertError(f"'{path}' is not an unencrypted OpenSSH private key; "
                        "make one with `fedsim certs node-key`") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"'{path}' is not an EC key; Flower's SuperNode "
                        "authentication needs EC (NIST P-384); `fedsim certs node-key`")
    return key


def check_node(layout: CertLayout, name: str) -> NodeKeyStatus:
    """A site's private key loads, is 0600, and matches its registered public key."""
    key_path = layout.node_key(name)
    key = load_node_key(key_path)
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CertError(f"'{key_path}' has mode {oct(mode)}; others may read it: "
                        f"chmod 600 {key_path}")
    public_text = _read(layout.node_pub(name), "public key")
    public = serialization.load_ssh_public_key(public_text)
    if public != key.public_key():
        raise CertError(f"'{layout.node_pub(name)}' is not the public half of "
                        f"'{key_path}'; enroll the .pub made with that key")
    return NodeKeyStatus(name=name, curve=key.curve.name, mode=oct(mode))


def site_names(layout: CertLayout) -> list[str]:
    """The sites with a public key in the set (sorted)."""
    if not layout.public_dir.is_dir():
        return []
    return sorted(p.stem for p in layout.public_dir.glob("*.pub"))
