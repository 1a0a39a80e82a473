"""Certificates and node keys for a deployment, made with `cryptography` alone.

Two separate trust mechanisms, as Flower 1.41 uses them:

- TLS: a private CA signs the SuperLink's server certificate; every SuperNode and
  the operator's `flwr` CLI verify the SuperLink against the CA certificate.
- SuperNode authentication: each site holds an EC (NIST P-384) private key in
  OpenSSH format (what `flower-supernode --auth-supernode-private-key` loads); its
  public key, one OpenSSH line, is registered at the SuperLink with
  `flwr supernode register` (the SuperLink runs with `--enable-supernode-auth`).

Private keys are written 0600. Nothing here knows Flower's runtime or the CLI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.errors import FedsimError
from fedsim.privacy.files import atomic_write_bytes

TLS_CURVE = ec.SECP256R1()
NODE_CURVE = ec.SECP384R1()  # the curve Flower's docs use for SuperNode keys
MAX_DAYS = 3650
LOCAL_NAMES = ("localhost", "127.0.0.1")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)
_NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$", re.IGNORECASE)


class CertError(FedsimError):
    """A certificate or key is missing, malformed, expired or does not match."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class CertLayout:
    """Where `fedsim certs init` puts each file under one folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate: given to everyone (SuperLink, sites, operator)."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA private key: keep it offline; no container mounts it."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's TLS certificate."""
        return self.root / "superlink" / "server.crt"

    @property
    def server_key(self) -> Path:
        """The SuperLink's TLS private key (0600)."""
        return self.root / "superlink" / "server.key"

    @property
    def public_dir(self) -> Path:
        """The enrolled sites' public keys, one `<name>.pub` each (for registration)."""
        return self.root / "supernodes" / "public"

    def node_key(self, name: str) -> Path:
        """A site's authentication private key (0600): given to that site only."""
        return self.root / "supernodes" / name / "node.key"

    def node_pub(self, name: str) -> Path:
        """A site's public key, as registered at the SuperLink."""
        return self.public_dir / f"{name}.pub"


@dataclass(frozen=True, kw_only=True)
class NodeKeys:
    """One site's key pair on disk and the public key's OpenSSH line."""

    name: str
    private_path: Path
    public_path: Path
    public_line: str


# ---------------------------------------------------------------- names and files


def check_server_name(name: str) -> str:
    """A DNS name or an IP address, or a CertError saying what is wrong."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(x) for x in labels):
        raise CertError(
            f"server name '{name}' is neither a DNS name nor an IP address; use the "
            "name sites reach the SuperLink by, e.g. superlink.example.org"
        )
    return name.rstrip(".").lower()


def check_node_name(name: str) -> str:
    """A site name usable as a file name (letters, digits, '-', '_', '.')."""
    if not _NODE_NAME.match(name):
        raise CertError(
            f"site name '{name}' must start with a letter or digit and hold only "
            "letters, digits, '-', '_' or '.' (at most 63); e.g. client-0"
        )
    return name


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, mode 0600 (a new folder 0700), whatever the umask."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    atomic_write_bytes(path, data, mode=0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a public file atomically with mode 0644."""
    atomic_write_bytes(path, data, mode=0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------- certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, *, days: int,
             now: dt.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def make_ca(*, days: int, common_name: str = "fedsim deployment CA",
            now: dt.datetime | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(TLS_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    cert = (_builder(name, name, key.public_key(), days=days, now=now or _now())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys([*names, *LOCAL_NAMES]):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                      names: list[str], *, days: int, now: dt.datetime | None = None
                      ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for `names` (plus localhost and 127.0.0.1)."""
    key = ec.generate_private_key(TLS_CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=True, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (_builder(subject, ca_cert.subject, key.public_key(), days=days,
                     now=now or _now())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(_alt_names(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski.value), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


# ---------------------------------------------------------------- node keys


def make_node_key(name: str) -> tuple[bytes, str]:
    """A site's authentication key pair: (OpenSSH private key, OpenSSH public line)."""
    key = ec.generate_private_key(NODE_CURVE)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {name}"


def write_node_keys(layout: CertLayout, name: str) -> NodeKeys:
    """Create and write one site's key pair (private 0600, public 0644)."""
    check_node_name(name)
    private, public_line = make_node_key(name)
    keys = NodeKeys(name=name, private_path=layout.node_key(name),
                    public_path=layout.node_pub(name), public_line=public_line)
    write_private(keys.private_path, private)
    write_public(keys.public_path, (public_line + "\n").encode())
    return keys


# ---------------------------------------------------------------- a whole set


@dataclass(frozen=True, kw_only=True)
class CertPlan:
    """What `fedsim certs init` is asked to make."""

    out: Path
    server_names: tuple[str, ...]
    clients: int = 2
    days: int = 365
    force: bool = False


@dataclass(frozen=True, kw_only=True)
class CertSet:
    """What `init_certs` wrote."""

    layout: CertLayout
    server_names: tuple[str, ...]
    nodes: tuple[NodeKeys, ...]
    not_after: dt.datetime


def node_names(count: int) -> list[str]:
    """The default site names: client-0, client-1, ..."""
    return [f"client-{i}" for i in range(count)]


def _check_plan(plan: CertPlan) -> list[str]:
    names = [check_server_name(n) for n in plan.server_names]
    if not names:
        raise CertError("give the SuperLink's name with --server-name NAME")
    if not 1 <= plan.days <= MAX_DAYS:
        raise CertError(f"--days must be between 1 and {MAX_DAYS}, got {plan.days}")
    if plan.clients < 0:
        raise CertError(f"--clients must be >= 0, got {plan.clients}")
    if plan.out.exists() and not plan.out.is_dir():
        raise CertError(f"'{plan.out}' is a file; give a folder to --out")
    if plan.out.is_dir() and any(plan.out.iterdir()) and not plan.force:
        raise CertError(
            f"'{plan.out}' already holds files; pass --force to replace them (sites "
            "holding the old keys must then be enrolled again) or choose another --out"
        )
    return names


def init_certs(plan: CertPlan) -> CertSet:
    """Write a CA, a SuperLink server certificate and one key pair per site."""
    names = _check_plan(plan)
    layout = CertLayout(root=plan.out)
    plan.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_public(plan.out / ".gitignore", b"# keys and certificates: never commit\n*\n")
    ca_key, ca_cert = make_ca(days=plan.days)
    write_private(layout.ca_key, _pem_key(ca_key))
    write_public(layout.ca_cert, _pem_cert(ca_cert))
    key, cert = issue_server_cert(ca_key, ca_cert, names, days=plan.days)
    write_private(layout.server_key, _pem_key(key))
    write_public(layout.server_cert, _pem_cert(cert))
    nodes = tuple(write_node_keys(layout, n) for n in node_names(plan.clients))
    return CertSet(layout=layout, server_names=tuple(names), nodes=nodes,
                   not_after=cert.not_valid_after_utc)


def pem_bytes(key: ec.EllipticCurvePrivateKey | None = None,
              cert: x509.Certificate | None = None) -> bytes:
    """PEM of a private key or a certificate (tests write odd certificates with it)."""
    if key is not None:
        return _pem_key(key)
    if cert is not None:
        return _pem_cert(cert)
    raise ValueError("give a key or a certificate")
