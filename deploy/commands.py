"""The command lines of a deployment, in one place.

docker-compose.yml runs exactly these argv lists (with the container paths of
`CONTAINER`), and the integration test runs them with its own temporary paths and
free ports; tests/test_compose.py checks the two agree. Nothing here starts a
process.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPERLINK_PORT = 9093  # the gateway's fleet door: the sites' Fleet API (published)
CONTROL_PORT = 9095  # the gateway's control door: the operator's Control API
UPSTREAM_PORT = 9091  # the SuperLink itself (all its APIs), on its loopback only
SUPERNODE_RUNTIME_PORT = 9094  # each SuperNode's Runtime API, on its loopback only


@dataclass(frozen=True, kw_only=True)
class SuperLinkSetup:
    """Where the SuperLink finds its TLS files and keeps its state."""

    ca: str
    cert: str
    key: str
    database: str
    host: str = "0.0.0.0"
    port: int = SUPERLINK_PORT


@dataclass(frozen=True, kw_only=True)
class GatewaySetup:
    """fedsim's gateway in front of the SuperLink: its doors and TLS files.

    `fedsim.deploy.gateway` parses the argv `gateway_argv` makes back into one.
    """

    ca: str
    cert: str
    key: str
    upstream: str = f"127.0.0.1:{UPSTREAM_PORT}"
    fleet: str = f"0.0.0.0:{SUPERLINK_PORT}"
    control: str = f"0.0.0.0:{CONTROL_PORT}"
    control_allow: tuple[str, ...] = ()  # networks besides loopback for the control door


@dataclass(frozen=True, kw_only=True)
class SiteSetup:
    """One site's SuperNode: how it reaches the SuperLink and its own files."""

    superlink: str  # host:port
    ca: str | None  # None: no --root-certificates (the system trust store)
    node_key: str
    partition_id: int
    data_dir: str
    policy: str | None = None
    he_key: str | None = None
    # the site's own writable folder: privacy ledgers and HE journal (None: the
    # SuperNode's $FLWR_HOME, lost with the container)
    state_dir: str | None = None
    runtime_port: int = SUPERNODE_RUNTIME_PORT


def superlink_argv(setup: SuperLinkSetup) -> list[str]:
    """`flower-superlink` with TLS, SuperNode authentication and a state database.

    It starts as `fedsim-superlink` (a longer SQLite lock wait: see
    `fedsim.deploy.superlink`). The ServerApp runs in Flower's default `subprocess`
    isolation (the SuperLink starts it), from the packages installed in the image:
    nothing is installed at run time.
    """
    return [
        "fedsim-superlink",
        "--ssl-ca-certfile", setup.ca,
        "--ssl-certfile", setup.cert,
        "--ssl-keyfile", setup.key,
        "--enable-supernode-auth",
        "--host", setup.host,
        "--port", str(setup.port),
        "--database", setup.database,
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
    ]


def gateway_argv(setup: GatewaySetup, superlink: list[str], *,
                 python: str = "python") -> list[str]:
    """The gateway, which starts `superlink` (argv) and is its only door.

    The SuperLink must listen on `setup.upstream` (a loopback address): the gateway
    passes the Fleet API from the network and the Control API from the operator's
    host only (`fedsim.deploy.gateway`).
    """
    return [python, "-m", "fedsim.deploy.gateway",
            "--ca", setup.ca, "--cert", setup.cert, "--key", setup.key,
            "--upstream", setup.upstream, "--fleet", setup.fleet,
            "--control", setup.control,
            *(arg for net in setup.control_allow for arg in ("--control-allow", net)),
            "--", *superlink]


def node_config(setup: SiteSetup) -> str:
    """The `--node-config` string: client id and the site's folders and files."""
    items = [f"partition-id={setup.partition_id}", f'data-dir="{setup.data_dir}"']
    for key, value in (("policy", setup.policy), ("he-key", setup.he_key),
                       ("privacy-dir", setup.state_dir)):
        if value is not None:
            items.append(f'{key}="{value}"')
    return " ".join(items)


def supernode_argv(setup: SiteSetup) -> list[str]:
    """`flower-supernode` authenticating with its key over TLS to the SuperLink."""
    argv = ["flower-supernode", "--superlink", setup.superlink]
    if setup.ca is not None:
        argv += ["--root-certificates", setup.ca]
    return argv + [
        "--auth-supernode-private-key", setup.node_key,
        "--node-config", node_config(setup),
        "--isolation", "subprocess",
        "--host", "127.0.0.1",
        "--port", str(setup.runtime_port),
    ]


def enroll_argv(*, superlink: str, ca: str, keys_dir: str,
                python: str = "python") -> list[str]:
    """Register every site public key in `keys_dir` at the SuperLink (idempotent)."""
    return [python, "-m", "fedsim", "deploy", "enroll", "--superlink", superlink,
            "--ca", ca, keys_dir]


def health_argv(url: str, *, ca: str | None = None,
                python: str = "python") -> list[str]:
    """Exit 0 when `url` answers 200 (Flower's /health), else 1; the health checks."""
    argv = [python, "-m", "fedsim.deploy.health", url]
    return argv + (["--ca", ca] if ca is not None else [])


def superlink_health_url(host: str = "127.0.0.1", port: int = SUPERLINK_PORT) -> str:
    """The SuperLink's own health endpoint (HTTPS, verified against the CA)."""
    return f"https://{host}:{port}/health"


def supernode_health_url(port: int = SUPERNODE_RUNTIME_PORT) -> str:
    """A SuperNode's Runtime API health endpoint (plain HTTP on its loopback)."""
    return f"http://127.0.0.1:{port}/health"


@dataclass(frozen=True, kw_only=True)
class ContainerPaths:
    """Where docker-compose.yml mounts each file inside the containers."""

    ca: str = "/fedsim/certs/ca.crt"
    server_cert: str = "/fedsim/certs/superlink/server.crt"
    server_key: str = "/fedsim/certs/superlink/server.key"
    database: str = "/fedsim/state/superlink.db"
    public_keys: str = "/fedsim/enroll"
    he_context: str = "/fedsim/he/server.ctx"
    runs: str = "/fedsim/runs"
    node_key: str = "/fedsim/site/key/node.key"
    data_dir: str = "/fedsim/data"
    policy: str = "/fedsim/site/policy/policy.toml"
    he_key: str = "/fedsim/he/client.key"
    site_state: str = "/fedsim/site/state"
    superlink_address: str = f"superlink:{SUPERLINK_PORT}"
    control_address: str = f"127.0.0.1:{CONTROL_PORT}"


CONTAINER = ContainerPaths()


def compose_superlink() -> list[str]:
    """The SuperLink service's command in docker-compose.yml: gateway + SuperLink."""
    link = superlink_argv(SuperLinkSetup(ca=CONTAINER.ca, cert=CONTAINER.server_cert,
                                         key=CONTAINER.server_key,
                                         database=CONTAINER.database,
                                         host="127.0.0.1", port=UPSTREAM_PORT))
    return gateway_argv(GatewaySetup(ca=CONTAINER.ca, cert=CONTAINER.server_cert,
                                     key=CONTAINER.server_key), link)


def compose_site(partition_id: int) -> list[str]:
    """A site service's command in docker-compose.yml."""
    return supernode_argv(SiteSetup(
        superlink=CONTAINER.superlink_address, ca=CONTAINER.ca,
        node_key=CONTAINER.node_key, partition_id=partition_id,
        data_dir=CONTAINER.data_dir, policy=CONTAINER.policy, he_key=CONTAINER.he_key,
        state_dir=CONTAINER.site_state))


def compose_enroll() -> list[str]:
    """The one-shot enrollment service's command in docker-compose.yml."""
    return enroll_argv(superlink=CONTAINER.control_address, ca=CONTAINER.ca,
                       keys_dir=CONTAINER.public_keys)
