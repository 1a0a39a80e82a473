"""`fedsim certs`: CA, SuperLink certificate, site keys Flower accepts, checks."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsim.deploy.certcheck import cert_names, check_node, check_server, load_cert
from fedsim.deploy.pki import (
    CertError,
    CertLayout,
    CertPlan,
    check_server_name,
    init_certs,
    issue_server_cert,
    make_ca,
    pem_bytes,
    write_private,
    write_public,
)
from tests.conftest import fedsim_cmd


@pytest.fixture(scope="module")
def cert_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs") / "set"
    return init_certs(CertPlan(out=out, server_names=("superlink", "10.0.0.5"),
                               clients=2, days=30))


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_0600_public_files_0644(cert_set):
    layout = cert_set.layout
    for secret in (layout.ca_key, layout.server_key, layout.node_key("client-0"),
                   layout.node_key("client-1")):
        assert mode(secret) == 0o600, secret
    for public in (layout.ca_cert, layout.server_cert, layout.node_pub("client-0")):
        assert mode(public) == 0o644, public
    assert mode(layout.root) == 0o700
    assert (layout.root / ".gitignore").read_text().splitlines()[-1] == "*"


def test_server_certificate_names(cert_set):
    cert = load_cert(cert_set.layout.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"superlink", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("127.0.0.1")}
    assert set(cert_names(cert)) == {"superlink", "localhost", "10.0.0.5", "127.0.0.1"}


def test_chain_verifies(cert_set):
    layout = cert_set.layout
    ca, cert = load_cert(layout.ca_cert), load_cert(layout.server_cert)
    cert.verify_directly_issued_by(ca)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    status = check_server(ca_path=layout.ca_cert, cert_path=layout.server_cert,
                          key_path=layout.server_key, name="superlink")
    assert 28 <= status.days_left <= 30


def test_site_keys_load_as_flower_loads_them(cert_set):
    from flwr.cli.supernode.register import try_load_public_key

    layout = cert_set.layout
    private = serialization.load_ssh_private_key(
        layout.node_key("client-0").read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert try_load_public_key(layout.node_pub("client-0"))  # what `register` sends
    status = check_node(layout, "client-0")
    assert status.mode == "0o600"


def test_each_site_has_its_own_key(cert_set):
    layout = cert_set.layout
    first, second = (layout.node_pub(n).read_text() for n in ("client-0", "client-1"))
    assert first != second


def _write_server(tmp_path, ca_key, ca_cert, *, days=10, now=None):
    key, cert = issue_server_cert(ca_key, ca_cert, ["superlink"], days=days, now=now)
    paths = {"ca": tmp_path / "ca.crt", "cert": tmp_path / "server.crt",
             "key": tmp_path / "server.key"}
    write_public(paths["ca"], pem_bytes(cert=ca_cert))
    write_public(paths["cert"], pem_bytes(cert=cert))
    write_private(paths["key"], pem_bytes(key=key))
    return paths


def test_expired_certificate_is_a_clear_error(tmp_path):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    ca_key, ca_cert = make_ca(days=1000, now=past)
    paths = _write_server(tmp_path, ca_key, ca_cert, days=30, now=past)
    with pytest.raises(CertError) as err:
        check_server(ca_path=paths["ca"], cert_path=paths["cert"])
    assert "expired on" in str(err.value)
    assert "fedsim certs init --force" in str(err.value)


def test_certificate_of_another_ca_is_a_clear_error(tmp_path):
    ca_key, ca_cert = make_ca(days=10)
    paths = _write_server(tmp_path, ca_key, ca_cert)
    _, other_ca = make_ca(days=10)
    write_public(paths["ca"], pem_bytes(cert=other_ca))
    with pytest.raises(CertError, match="was not signed by the CA"):
        check_server(ca_path=paths["ca"], cert_path=paths["cert"])


def test_wrong_name_and_wrong_key_are_clear_errors(tmp_path, cert_set):
    layout = cert_set.layout
    with pytest.raises(CertError, match="is not valid for 'elsewhere.org'"):
        check_server(ca_path=layout.ca_cert, cert_path=layout.server_cert,
                     name="elsewhere.org")
    ca_key, ca_cert = make_ca(days=10)
    other = _write_server(tmp_path, ca_key, ca_cert)
    with pytest.raises(CertError, match="does not belong to its certificate"):
        check_server(ca_path=layout.ca_cert, cert_path=layout.server_cert,
                     key_path=other["key"])


def test_not_a_certificate(tmp_path):
    bogus = tmp_path / "ca.crt"
    bogus.write_text("hello")
    with pytest.raises(CertError, match="is not a PEM certificate"):
        load_cert(bogus)


def test_readable_site_key_is_refused(tmp_path):
    plan = CertPlan(out=tmp_path / "s", server_names=("a",), clients=1)
    layout = init_certs(plan).layout
    layout.node_key("client-0").chmod(0o644)
    with pytest.raises(CertError, match="chmod 600"):
        check_node(layout, "client-0")


@pytest.mark.parametrize("name", ["bad name", "-lead.example", "a..b", "x" * 64, ""])
def test_bad_server_names(name):
    with pytest.raises(CertError, match="neither a DNS name nor an IP address"):
        check_server_name(name)


@pytest.mark.parametrize("name", ["superlink", "fl.example.org", "10.1.2.3", "::1"])
def test_good_server_names(name):
    assert check_server_name(name)


# ---------------------------------------------------------------- the command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(fedsim_cmd(*args), capture_output=True, text=True,
                          timeout=120)


def test_cli_init_check_and_refusals(tmp_path):
    out = str(tmp_path / "certs")
    made = run_cli("certs", "init", "--out", out, "--server-name", "superlink")
    assert made.returncode == 0, made.stderr
    assert run_cli("certs", "check", out, "--server-name", "superlink").returncode == 0
    again = run_cli("certs", "init", "--out", out, "--server-name", "superlink")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    forced = run_cli("certs", "init", "--out", out, "--server-name", "superlink",
                     "--force")
    assert forced.returncode == 0
    wrong = run_cli("certs", "check", out, "--server-name", "other.org")
    assert wrong.returncode == 2 and "is not valid for 'other.org'" in wrong.stderr
    bad = run_cli("certs", "init", "--out", str(tmp_path / "b"), "--server-name", "a b")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_cli_node_key(tmp_path):
    done = run_cli("certs", "node-key", "--out", str(tmp_path), "--name", "site-7")
    assert done.returncode == 0, done.stderr
    assert mode(tmp_path / "node.key") == 0o600
    assert (tmp_path / "site-7.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    again = run_cli("certs", "node-key", "--out", str(tmp_path), "--name", "site-7")
    assert again.returncode == 2 and "--force" in again.stderr


def test_layout_is_stable():
    layout = CertLayout(root=__import__("pathlib").Path("/c"))
    assert str(layout.node_key("client-0")) == "/c/supernodes/client-0/node.key"
    assert str(layout.node_pub("client-0")) == "/c/supernodes/public/client-0.pub"
