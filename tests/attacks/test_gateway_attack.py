"""A stranger on the network, holding only ca.crt, tries to join the federation.

Adversary: anyone who can reach the port the sites use (it must be reachable from
the network) and holds the public `ca.crt`, but no enrolled key. Before the
gateway, Flower 1.41 served the unauthenticated Control API on that same port:
such a stranger ran `flwr supernode register` with a key of its own, then
activated a SuperNode with it and could train (and read the global model).

Now the sites' port is the gateway's fleet door. The stranger tries, with stock
Flower tools only: `flwr supernode register` through it, a `flower-supernode`
that self-registers (no key), one with a key nobody enrolled, and the raw
self-registration call. Everything is refused, and the operator's view (the
control door on the operator's host) lists only the enrolled site. Processes run
on 127.0.0.1 (the SuperLink on its own port, the gateway in front).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedsim.deploy import commands
from fedsim.deploy.flwr_cli import Connection, connection_toml, flwr_executable
from fedsim.deploy.gateway import (
    SELF_REGISTER_PATH,
    GatewayApp,
    control_door,
    control_peers,
    fleet_door,
)
from fedsim.deploy.pki import CertLayout, write_node_keys
from tests.conftest import fedsim_cmd
from tests.test_deploy import Processes, free_port, healthy, wait_until

START_TIMEOUT_S = 60
REFUSED_TIMEOUT_S = 60


class Federation:
    """A SuperLink behind the gateway, one enrolled site key; all on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs = Processes(root)
        self.upstream, self.fleet, self.control = free_port(), free_port(), free_port()
        subprocess.run(fedsim_cmd("certs", "init", "--out", str(root / "certs"),
                                  "--server-name", "localhost", "--clients", "1",
                                  "--days", "2"),
                       check=True, capture_output=True, timeout=60)
        self.layout = CertLayout(root=root / "certs")

    @property
    def ca(self) -> str:
        return str(self.layout.ca_cert)

    def start(self) -> None:
        (self.root / "state").mkdir()
        link = commands.superlink_argv(commands.SuperLinkSetup(
            ca=self.ca, cert=str(self.layout.server_cert),
            key=str(self.layout.server_key),
            database=str(self.root / "state" / "superlink.db"), host="127.0.0.1",
            port=self.upstream))
        gateway = commands.GatewaySetup(
            ca=self.ca, cert=str(self.layout.server_cert), key=str(self.layout.server_key),
            upstream=f"127.0.0.1:{self.upstream}", fleet=f"127.0.0.1:{self.fleet}",
            control=f"127.0.0.1:{self.control}")
        self.procs.start("superlink", commands.gateway_argv(gateway, link,
                                                            python=sys.executable))
        url = commands.superlink_health_url(port=self.fleet)
        wait_until(lambda: healthy(url, self.ca), timeout=START_TIMEOUT_S,
                   what="gateway health")

    def flwr(self, address: str, *args: str) -> dict:
        """`flwr ARGS --format json` against `address`, with only ca.crt in hand."""
        home = self.root / f"flwr-home-{address.replace(':', '-')}"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(connection_toml(
            Connection(address=address, ca=Path(self.ca))))
        done = subprocess.run([flwr_executable(), *args, "fedsim", "--format", "json"],
                              capture_output=True, text=True, timeout=120,
                              env={**self.procs.env("flwr"), "FLWR_HOME": str(home)})
        start = done.stdout.find("{")
        return json.loads(done.stdout[start:]) if start >= 0 else {"success": False}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("gateway"))
    try:
        fed.start()
        enroll = commands.enroll_argv(superlink=f"127.0.0.1:{fed.control}", ca=fed.ca,
                                      keys_dir=str(fed.layout.public_dir),
                                      python=sys.executable)
        done = subprocess.run(enroll, capture_output=True, text=True, timeout=120,
                              env=fed.procs.env("enroll"))
        assert done.returncode == 0, done.stderr + done.stdout
        yield fed
    finally:
        fed.procs.stop_all()


def _stranger_key(fed: Federation):
    """The stranger's own key pair (made once per module)."""
    layout = CertLayout(root=fed.root / "stranger")
    if not layout.node_key("stranger").exists():
        write_node_keys(layout, "stranger")
    return layout.node_key("stranger"), layout.node_pub("stranger")


def test_attack_stranger_registers_through_the_sites_port(federation):
    key = _stranger_key(federation)
    reply = federation.flwr(f"127.0.0.1:{federation.fleet}", "supernode", "register",
                            str(key[1]))
    assert not reply.get("success"), reply
    log = federation.procs.log("superlink")
    assert "/v1/control/supernode" in log or "/v1/control/" in log, log[-2000:]
    assert "not served on the fleet door" in log


def _stock_supernode(fed: Federation, name: str, key: str | None, *, refused: str
                     ) -> tuple[int | None, str]:
    """Start a stock `flower-supernode` at the fleet door; wait until it is refused.

    Refused: it exits, or its log shows `refused` (a self-registering SuperNode
    that was refused keeps running in Flower 1.41, without a node); it is then
    stopped. (exit code or None, its log)
    """
    argv = [str(Path(sys.executable).with_name("flower-supernode")), "--superlink",
            f"127.0.0.1:{fed.fleet}", "--root-certificates", fed.ca,
            "--max-retries", "2", "--node-config", "partition-id=9",
            "--port", str(free_port())]
    if key is not None:
        argv += ["--auth-supernode-private-key", key]
    proc = fed.procs.start(name, argv)
    wait_until(lambda: proc.poll() is not None or refused in fed.procs.log(name),
               timeout=REFUSED_TIMEOUT_S, what=f"{name} refused")
    code = proc.poll()
    if code is None:
        proc.kill()
        proc.wait(10)
    return code, fed.procs.log(name)


def test_attack_stock_supernode_self_registers(federation):
    code, log = _stock_supernode(federation, "self-register", key=None,
                                 refused="403 Forbidden")
    assert code != 0, log[-2000:]
    assert f"{SELF_REGISTER_PATH}'" in log and "activate-node" not in log, log[-2000:]
    assert f"{SELF_REGISTER_PATH} is not served" in federation.procs.log("superlink")


def test_attack_stock_supernode_with_an_unenrolled_key(federation):
    private, _ = _stranger_key(federation)
    code, log = _stock_supernode(federation, "unenrolled", key=str(private),
                                 refused="Failed to activate SuperNode")
    assert code != 0, log[-2000:]
    assert "Failed to activate SuperNode" in log, log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" not in log  # TLS was fine; the key was not


def test_attack_operator_still_sees_only_the_enrolled_site(federation):
    """After every attempt above, the SuperLink knows one node: client-0's."""
    reply = federation.flwr(f"127.0.0.1:{federation.control}", "supernode", "list")
    assert reply.get("success"), reply
    nodes = reply.get("nodes", [])
    assert len(nodes) == 1, reply


def _call(app: GatewayApp, path: str, peer: str) -> tuple[int, bool]:
    """One request through the ASGI app; (status, whether it reached upstream)."""
    reached = []

    async def upstream(request):  # stands in for the SuperLink's transport
        import httpx

        reached.append(request.url.path)
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    async def run() -> int:
        import httpx

        app.client = httpx.AsyncClient(base_url="https://upstream",
                                       transport=httpx.MockTransport(upstream))
        sent = []
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
                 "headers": [(b"content-type", b"application/protobuf")],
                 "client": (peer, 40000)}
        messages = [{"type": "http.request", "body": b"x", "more_body": False}]

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"]

    return asyncio.run(run()), bool(reached)


def test_attack_control_door_from_a_site_container(federation):
    """A peer on the sites' network (not the Docker host) cannot use the control door.

    Played at the ASGI level with the peer address a site container would have
    (loopback cannot carry another source address); the allow list is the one the
    gateway builds (loopback + the host's gateway), without the host's gateway here.
    """
    app = GatewayApp(control_door(control_peers([], host_gateway=False)), "x:1",
                     ca=federation.ca)
    assert _call(app, "/v1/control/start-run", "172.18.0.5") == (403, False)
    assert _call(app, "/v1/control/start-run", "127.0.0.1") == (200, True)
    fleet = GatewayApp(fleet_door(), "x:1", ca=federation.ca)
    assert _call(fleet, "/v1/control/start-run", "127.0.0.1") == (403, False)
    assert _call(fleet, "/v1/runtime/pull-messages", "127.0.0.1") == (403, False)
    assert _call(fleet, SELF_REGISTER_PATH, "127.0.0.1") == (403, False)
    assert _call(fleet, "/v1/fleet/pull-messages", "10.1.2.3") == (200, True)


def test_health_is_answered_through_the_fleet_door(federation):
    url = commands.superlink_health_url(port=federation.fleet)
    context = ssl.create_default_context(cafile=federation.ca)
    with urllib.request.urlopen(url, context=context, timeout=5) as reply:
        assert reply.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        request = urllib.request.Request(
            f"https://127.0.0.1:{federation.fleet}/v1/control/list-runs", data=b"",
            method="POST")
        urllib.request.urlopen(request, context=context, timeout=5)
    assert refused.value.code == 403
