"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here).

The commands must be the ones fedsim.deploy.commands builds (those the integration
test runs); each service must mount only what it may see, read-only where secret;
health checks and restart policies must be there.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from fedsim.deploy import commands
from fedsim.deploy.commands import CONTAINER
from fedsim.deploy.runconfig import DEPLOY_FIELDS, DEPLOY_KEYS

ROOT = Path(__file__).resolve().parents[1]
SITES = ("client-0", "client-1")
_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default}, with every variable unset."""
    return _VAR.sub(lambda m: m.group(2), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text()))


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (host path, read-only)."""
    found = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        found[parts[1]] = (parts[0], len(parts) > 2 and parts[2] == "ro")
    return found


def flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def test_services(compose):
    assert set(compose["services"]) == {"superlink", "enroll", *SITES}


def test_commands_are_the_ones_the_integration_test_runs(compose):
    services = compose["services"]
    assert services["superlink"]["command"] == commands.compose_superlink()
    assert services["enroll"]["command"] == commands.compose_enroll()
    for index, site in enumerate(SITES):
        assert services[site]["command"] == commands.compose_site(index)


def test_test_commands_use_the_same_flags(compose, tmp_path):
    """The test's argv differ from compose's in paths and ports only."""
    link = commands.superlink_argv(commands.SuperLinkSetup(
        ca="a", cert="b", key="c", database="d", host="127.0.0.1", port=1))
    wrapped = commands.gateway_argv(commands.GatewaySetup(ca="a", cert="b", key="c"), link)
    assert flags(wrapped) == flags(compose["services"]["superlink"]["command"])
    site = commands.supernode_argv(commands.SiteSetup(
        superlink="x:1", ca="a", node_key="k", partition_id=0, data_dir="d",
        policy="p", he_key="h", state_dir="s", runtime_port=2))
    assert flags(site) == flags(compose["services"]["client-0"]["command"])


def test_superlink_mounts_its_files_only(compose):
    found = mounts(compose["services"]["superlink"])
    assert found[CONTAINER.ca] == ("./deployment/certs/ca.crt", True)
    assert found[str(Path(CONTAINER.server_key).parent)] == (
        "./deployment/certs/superlink", True)
    he_folder = str(Path(CONTAINER.he_context).parent)
    assert found[he_folder] == ("./deployment/he-server", True)
    assert not found[CONTAINER.runs][1]  # written: run folders
    assert not found[str(Path(CONTAINER.database).parent)][1]  # written: state
    hosts = " ".join(host for host, _ in found.values())
    for secret in ("supernodes", "he-client", "ca.key"):
        assert secret not in hosts


@pytest.mark.parametrize("index", [0, 1])
def test_each_site_mounts_its_own_files_read_only_and_its_state_writable(compose, index):
    site = SITES[index]
    found = mounts(compose["services"][site])
    assert found[str(Path(CONTAINER.node_key).parent)] == (
        f"./deployment/certs/supernodes/{site}", True)
    assert found[CONTAINER.data_dir] == (f"./deployment/sites/{site}/data", True)
    assert found[str(Path(CONTAINER.policy).parent)] == (
        f"./deployment/sites/{site}/policy", True)
    assert found[str(Path(CONTAINER.he_key).parent)] == ("./deployment/he-client", True)
    # ledgers and HE journal: a folder of its own that outlives the container
    assert found.pop(CONTAINER.site_state) == (f"./deployment/sites/{site}/state", False)
    argv = compose["services"][site]["command"]
    assert 'privacy-dir="/fedsim/site/state"' in argv[argv.index("--node-config") + 1]
    assert all(read_only for _, read_only in found.values())
    hosts = " ".join(host for host, _ in found.values())
    other = SITES[1 - index]
    assert other not in hosts and "he-server" not in hosts and "superlink" not in hosts


def test_enrollment_sees_public_keys_only(compose):
    found = mounts(compose["services"]["enroll"])
    public = ("./deployment/certs/supernodes/public", True)
    assert found[CONTAINER.public_keys] == public
    assert set(found) == {CONTAINER.ca, CONTAINER.public_keys}


def test_superlink_listens_on_its_loopback_behind_the_gateway(compose):
    argv = compose["services"]["superlink"]["command"]
    assert argv[:3] == ["python", "-m", "fedsim.deploy.gateway"]
    link = argv[argv.index("--") + 1:]
    assert link[0] == "fedsim-superlink"
    assert link[link.index("--host") + 1] == "127.0.0.1"
    upstream = f"127.0.0.1:{link[link.index('--port') + 1]}"
    assert argv[argv.index("--upstream") + 1] == upstream
    assert "--enable-supernode-auth" in link


def test_enrollment_uses_the_control_door_on_the_superlinks_loopback(compose):
    enroll = compose["services"]["enroll"]
    assert enroll["network_mode"] == "service:superlink"
    argv = enroll["command"]
    assert argv[argv.index("--superlink") + 1] == f"127.0.0.1:{commands.CONTROL_PORT}"


def test_only_the_superlink_builds_the_image(compose):
    services = compose["services"]
    assert "build" in services["superlink"]
    assert [name for name, svc in services.items() if "build" in svc] == ["superlink"]
    images = {svc["image"] for svc in services.values()}
    assert images == {"fedsim:cpu"}


def test_health_checks(compose):
    services = compose["services"]
    link = services["superlink"]["healthcheck"]["test"]
    assert link[1:] == commands.health_argv(commands.superlink_health_url(),
                                            ca=CONTAINER.ca)
    for site in SITES:
        test = services[site]["healthcheck"]["test"]
        assert test[1:] == commands.health_argv(commands.supernode_health_url())


def test_restart_policies_and_order(compose):
    services = compose["services"]
    assert services["superlink"]["restart"] == "unless-stopped"
    assert services["enroll"]["restart"] == "no"
    waits_for = services["enroll"]["depends_on"]["superlink"]["condition"]
    assert waits_for == "service_healthy"
    for site in SITES:
        assert services[site]["restart"] == "unless-stopped"
        assert services[site]["depends_on"]["enroll"]["condition"] == \
            "service_completed_successfully"


def test_superlink_port_and_passphrase_from_the_environment(compose):
    services = compose["services"]
    # the fleet door on the network, the control door on the host's loopback only
    assert services["superlink"]["ports"] == [
        f"0.0.0.0:{commands.SUPERLINK_PORT}:{commands.SUPERLINK_PORT}",
        f"127.0.0.1:{commands.CONTROL_PORT}:{commands.CONTROL_PORT}"]
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for site in SITES:
        # the passphrase comes from the site's environment at run time
        assert raw[site]["environment"] == {
            "FEDSIM_HE_PASSPHRASE": "${FEDSIM_HE_PASSPHRASE:-}"}
        assert "ports" not in services[site]


def test_app_defaults_match_the_container_paths():
    app = tomllib.loads((ROOT / "deploy" / "pyproject.toml").read_text())
    config = app["tool"]["flwr"]["app"]["config"]
    assert config["out"] == CONTAINER.runs
    assert config["he-context"] == CONTAINER.he_context
    assert config["he-client-key"] == CONTAINER.he_key
    expected = {k.replace("_", "-") for k in DEPLOY_FIELDS} | set(DEPLOY_KEYS)
    assert set(config) == expected


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    # one base, named by BASE, for every stage: the legacy builder pulls nothing else
    assert "ARG BASE=python:3.11-slim" in text
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${BASE}", "${BASE}"]
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert "python -P -c" in text  # the installed package, not the source folder
    assert re.search(r"^USER fedsim$", text, re.MULTILINE)
    copied = re.findall(r"^COPY (\S+)", text, re.MULTILINE)
    assert copied and not any(c in (".", "deployment", "runs") for c in copied)
    assert "pip install ." in text
    for secret in ("PASSPHRASE", "ca.key", "node.key", "server.key"):
        assert secret not in text


def test_image_holds_every_package_of_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(),
                            re.MULTILINE))
    allowed = {line[1:].rstrip("/") for line in
               (ROOT / ".dockerignore").read_text().split() if line.startswith("!")}
    assert folders <= copied and folders <= allowed


def test_dockerignore_keeps_secrets_out():
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("**")] == "**"  # everything excluded, then code allowed
    for pattern in ("**/*.key", "**/*.ctx", "**/.env"):
        assert pattern in lines
    assert "!deployment/" not in lines and "!.venv/" not in lines
