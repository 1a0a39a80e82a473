"""fedsim's gateway: the only door from the network to a SuperLink.

Flower 1.41 serves its Fleet API (sites), its Control API (operator; not
authenticated in the open-source release) and its Runtime API (the ServerApp) on
one HTTPS port. The gateway runs the SuperLink on its container's loopback and
listens itself, with the same server certificate, on two doors:

- the **fleet** door (9093, for the sites, published on the network): only
  `/v1/fleet/*` and `/health`, and never `/v1/fleet/register-node`: a SuperNode
  cannot enroll itself (enrollment is the operator's, through the control door);
- the **control** door (9095, published on the operator's host loopback only):
  only `/v1/control/*` and `/health`, and only from peers in its allow list (by
  default loopback and the container's default gateway, i.e. the Docker host
  itself, which is where a published loopback port's traffic comes from).

Everything else (the Runtime API, unknown paths) is refused with 403 and one
logged line. Requests that pass are forwarded unchanged (headers, body: node
authentication's signatures stay intact) to the SuperLink over TLS, verified
against the CA.

    python -m fedsim.deploy.gateway --cert ... --key ... --ca ... \
        --upstream 127.0.0.1:9091 -- flower-superlink ... --host 127.0.0.1 --port 9091

With a command after `--` the gateway starts it (the SuperLink), waits for its
health endpoint, serves, and exits with the SuperLink's status when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsim.deploy.commands import GatewaySetup

log = logging.getLogger("fedsim.gateway")

FLEET_PREFIX = "/v1/fleet/"
CONTROL_PREFIX = "/v1/control/"
HEALTH_PATH = "/health"
# Self-registration: refused by Flower too while --enable-supernode-auth is on; the
# gateway refuses it whatever the SuperLink's flags.
SELF_REGISTER_PATH = "/v1/fleet/register-node"
GRACEFUL_SHUTDOWN_S = 3  # open connections get this long after a stop signal (docker stop: 10 s)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding",
                        "upgrade", "host"})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class Door:
    """One listening side of the gateway and what it lets through."""

    name: str
    prefix: str
    refused_paths: frozenset[str] = frozenset()
    peers: tuple[Network, ...] | None = None  # None: any peer

    def refusal(self, path: str, peer: str | None) -> str | None:
        """Why this request may not pass (one line), or None when it may."""
        if self.peers is not None and not peer_in(peer, self.peers):
            return f"peer {peer} is not allowed on the {self.name} door"
        if path == HEALTH_PATH:
            return None
        if not path.startswith(self.prefix) or path in self.refused_paths:
            return f"{path} is not served on the {self.name} door"
        return None


def peer_in(peer: str | None, networks: Sequence[Network]) -> bool:
    """True when the peer address lies in one of the networks."""
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def fleet_door() -> Door:
    """The sites' door: Fleet API only, no self-registration."""
    return Door(name="fleet", prefix=FLEET_PREFIX,
                refused_paths=frozenset({SELF_REGISTER_PATH}))


def control_door(peers: Sequence[Network]) -> Door:
    """The operator's door: Control API only, from the allowed peers only."""
    return Door(name="control", prefix=CONTROL_PREFIX, peers=tuple(peers))


def default_gateway(route_table: Path = Path("/proc/net/route")) -> str | None:
    """This host's (or container's) IPv4 default gateway, from the kernel's table."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            raw = int(fields[2], 16)
            return str(ipaddress.IPv4Address(raw.to_bytes(4, "little")))
    return None


def control_peers(extra: Sequence[str], *, host_gateway: bool = True) -> list[Network]:
    """Loopback, the Docker host (default gateway) and any extra networks."""
    nets: list[Network] = [ipaddress.ip_network("127.0.0.0/8"),
                           ipaddress.ip_network("::1/128")]
    gateway = default_gateway() if host_gateway else None
    if gateway is not None:
        nets.append(ipaddress.ip_network(f"{gateway}/32"))
    return nets + [ipaddress.ip_network(item, strict=False) for item in extra]


def _forward_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.decode("latin-1").lower() not in HOP_BY_HOP]


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _refuse(send, reason: str) -> None:
    body = f"refused by fedsim's gateway: {reason}\n".encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class GatewayApp:
    """An ASGI app: check each request against its door, forward it, or refuse it."""

    def __init__(self, door: Door, upstream: str, ca: str) -> None:
        import httpx

        self.door = door
        context = ssl.create_default_context(cafile=ca)
        self.client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=context,
                                        timeout=httpx.Timeout(300.0, connect=10.0))

    async def __call__(self, scope, receive, send) -> None:
        """Serve one ASGI connection scope (HTTP requests and the lifespan)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        peer = (scope.get("client") or (None, None))[0]
        reason = self.door.refusal(scope["path"], peer)
        if reason is not None:
            log.warning("gateway: refused %s %s from %s: %s", scope["method"],
                        scope["path"], peer, reason)
            await _read_body(receive)
            await _refuse(send, reason)
            return
        await self._forward(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope, receive, send) -> None:
        import httpx

        body = await _read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope["path"] + (f"?{query}" if query else "")
        request = self.client.build_request(
            scope["method"], url, content=body,
            headers=_forward_headers(scope.get("headers", [])))
        try:
            reply = await self.client.send(request, stream=True)
        except httpx.HTTPError as err:
            log.warning("gateway: SuperLink unreachable for %s: %s", scope["path"], err)
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b"SuperLink unreachable\n"})
            return
        try:
            await send({"type": "http.response.start", "status": reply.status_code,
                        "headers": _forward_headers(reply.headers.raw)})
            async for chunk in reply.aiter_raw():
                await send({"type": "http.response.body", "body": chunk,
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await reply.aclose()


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) into its parts."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"'{address}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def _servers(setup: GatewaySetup) -> list:
    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the gateway handles signals
            yield

    doors = [(fleet_door(), setup.fleet),
             (control_door(control_peers(setup.control_allow)), setup.control)]
    servers = []
    for door, address in doors:
        host, port = split_address(address)
        config = uvicorn.Config(GatewayApp(door, setup.upstream, setup.ca), host=host,
                                port=port, ssl_certfile=setup.cert,
                                ssl_keyfile=setup.key, log_level="warning",
                                access_log=False, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        servers.append(QuietServer(config))
    return servers


async def _wait_healthy(setup: GatewaySetup, child: subprocess.Popen | None,
                        timeout: float = 120.0) -> None:
    from fedsim.deploy.health import probe

    url = f"https://{setup.upstream}/health"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        problem = await asyncio.to_thread(probe, url, ca=setup.ca, timeout=2.0)
        if problem is None:
            return
        if child is not None and child.poll() is not None:
            raise SystemExit(child.returncode or 1)
        if loop.time() > deadline:
            raise SystemExit(f"gateway: the SuperLink never became healthy: {problem}")
        await asyncio.sleep(0.5)


async def serve(setup: GatewaySetup, command: Sequence[str] = ()) -> int:
    """Start the SuperLink (if a command is given), then both doors, until either ends."""
    child = subprocess.Popen(list(command)) if command else None
    loop = asyncio.get_running_loop()
    servers = _servers(setup)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _wait_healthy(setup, child)
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        log.warning("gateway: fleet door %s, control door %s (from %s), SuperLink %s",
                    setup.fleet, setup.control,
                    ", ".join(str(n) for n in control_peers(setup.control_allow)),
                    setup.upstream)
        while not stop.is_set() and not any(t.done() for t in tasks):
            if child is not None and child.poll() is not None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=20)
            if child.poll() is None:
                child.kill()
    return child.wait() if child is not None else 0


def parse_args(argv: Sequence[str]) -> tuple[GatewaySetup, list[str]]:
    """The gateway's options, and the SuperLink command after `--` (if any)."""
    argv = list(argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m fedsim.deploy.gateway",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="server certificate (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    parser.add_argument("--ca", required=True, help="CA certificate (verifies upstream)")
    parser.add_argument("--upstream", default=GatewaySetup.upstream,
                        help="the SuperLink's HOST:PORT (on loopback)")
    parser.add_argument("--fleet", default=GatewaySetup.fleet, help="fleet door HOST:PORT")
    parser.add_argument("--control", default=GatewaySetup.control,
                        help="control door HOST:PORT")
    parser.add_argument("--control-allow", action="append", default=[], metavar="CIDR",
                        help="also let this network use the control door (repeat)")
    args = parser.parse_args(own)
    for item in args.control_allow:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            parser.error(f"--control-allow '{item}' is not a network (e.g. 10.0.0.0/24)")
    return GatewaySetup(cert=args.cert, key=args.key, ca=args.ca, upstream=args.upstream,
                        fleet=args.fleet, control=args.control,
                        control_allow=tuple(args.control_allow)), command


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (the SuperLink container's command)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    setup, command = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(serve(setup, command))


if __name__ == "__main__":
    sys.exit(main())
