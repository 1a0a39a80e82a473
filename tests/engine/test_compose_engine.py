"""docs/deployment.md on a real container engine, step by step, with its commands.

1. the engine (`deploy/engine/setup.sh`: docker.io, dockerd, compose v2, a base
   image where no registry serves one), 2. the image from the Dockerfile as it is
   (torch's wheel from a PEP 503 index of this machine's wheel on 127.0.0.1, through
   the Dockerfile's TORCH_INDEX argument), 3. certificates, HE keys, each site's
   data (`fedsim deploy site-data`) and policy, 4. `docker compose up` (SuperLink
   behind the gateway, enrollment, 2 sites), 5. a DP + HE run of 2 rounds submitted
   from this host through the control door, waited for and collected.

Then the refusals, played from a container on the deployment's own network with
the image's stock Flower tools: a SuperNode with an unenrolled key, one that
self-registers, `flwr supernode register` through the fleet door, and the control
door itself. Finally everything the test made (containers, networks, images) is
removed and checked gone.

Network: this host's loopback, and the containers and networks the test makes.
Measured numbers are printed (run with `-s`) and written to
$FEDSIM_ENGINE_LOG (default: engine.log in the test's temporary folder).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedsim.privacy.keys import KeyFileError, key_info
from tests.test_deploy import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "engine test passphrase"
RUN_TIMEOUT_S = 600
INDEX_PORT = 18093
POLICY = "[dp]\nrequired = true\nmax-epsilon = 50.0\n[he]\nrequired = true\n"


@dataclass
class Engine:
    """What the test made, and what it measured."""

    root: Path
    tag: str
    project: str
    env: dict[str, str]
    images_before: set[str]
    numbers: dict[str, str] = field(default_factory=dict)

    @property
    def deploy(self) -> Path:
        return self.root / "deployment"

    def record(self, key: str, value: str) -> None:
        self.numbers[key] = value
        line = f"engine test: {key}: {value}"
        print(line, flush=True)
        log = Path(os.environ.get("FEDSIM_ENGINE_LOG", self.root / "engine.log"))
        with log.open("a") as out:
            out.write(line + "\n")

    def compose(self, *args: str, timeout: float = 300, check: bool = True
                ) -> subprocess.CompletedProcess:
        return sh(["docker", "compose", "-p", self.project, *args], env=self.env,
                  timeout=timeout, check=check)


def sh(argv: list[str], *, timeout: float = 300, check: bool = True,
       env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def fedsim(*args: str, env: dict[str, str], timeout: float = 300
           ) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "fedsim", *args], env=env, timeout=timeout)


# ---------------------------------------------------------------- 1. the engine


def image_ids() -> set[str]:
    out = sh(["docker", "images", "-a", "-q", "--no-trunc"]).stdout
    return set(out.split())


def torch_index(folder: Path) -> Path:
    """This machine's torch wheel and its dependencies as a PEP 503 index."""
    wheels = folder / "wheels"
    sh([sys.executable, "-m", "pip", "download", "-q", "torch==2.13.0", "-d", str(wheels)],
       timeout=600)
    simple = folder / "simple"
    for wheel in wheels.glob("*.whl"):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        (simple / project).mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, simple / project / wheel.name)
    for project in simple.iterdir():
        links = "".join(f'<a href="{html.escape(w.name)}">{html.escape(w.name)}</a>\n'
                        for w in sorted(project.glob("*.whl")))
        (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    return folder


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without a log line per request."""

    def log_message(self, *args) -> None:
        pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, int]:
    """The index over HTTP on 127.0.0.1 (the build runs with --network host)."""
    handler = partial(QuietHandler, directory=str(folder))
    try:  # a fixed port keeps the build's cache valid from one run to the next
        server = ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def build(engine: Engine) -> None:
    """`docker build -t TAG .` with the Dockerfile as it is, TORCH_INDEX local."""
    index = torch_index(engine.root / "index")
    server, port = serve(index)
    try:
        start = time.monotonic()
        sh(["docker", "build", "--network", "host", "--build-arg",
            f"TORCH_INDEX=http://127.0.0.1:{port}/simple", "-t", engine.tag, "."],
           timeout=900)
        engine.record("image build", f"{time.monotonic() - start:.0f} s")
    finally:
        server.shutdown()
    size = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", engine.tag]).stdout)
    engine.record("image size", f"{size / 1e9:.2f} GB ({size} bytes)")


# ---------------------------------------------------------------- 2. the deployment folder


def write_deployment(engine: Engine) -> None:
    """docs/deployment.md sections 1-3, with its commands."""
    d, env = engine.deploy, engine.env
    fedsim("certs", "init", "--out", str(d / "certs"), "--server-name", "superlink",
           "--clients", "2", "--days", "2", env=env)
    fedsim("certs", "check", str(d / "certs"), "--server-name", "superlink", env=env)
    fedsim("keys", "init", "--out", str(d / "he-client"), "--params", "compact", env=env)
    (d / "he-server").mkdir()
    (d / "he-client" / "server.ctx").rename(d / "he-server" / "server.ctx")
    for site in (0, 1):
        fedsim("deploy", "site-data", "--dataset", "digits", "--partition", str(site),
               "--partitions", "2", "--out", str(d / "sites" / f"client-{site}" / "data"),
               env=env)
        policy = d / "sites" / f"client-{site}" / "policy"
        policy.mkdir(parents=True)
        (policy / "policy.toml").write_text(POLICY)
    states = [d / "sites" / f"client-{site}" / "state" for site in (0, 1)]
    for folder in (d / "runs", d / "state", *states):
        folder.mkdir()
    # the guide's permissions: the containers' uid 10001 gets what they mount and
    # write, nothing else (ca.key and certs/ itself stay the operator's)
    sh(["chown", "-R", "10001:10001", str(d / "certs" / "superlink"),
        *[str(p) for p in sorted((d / "certs" / "supernodes").glob("client-*"))],
        str(d / "he-client"), str(d / "runs"), str(d / "state"), *map(str, states)])


# ---------------------------------------------------------------- 3. compose up


def services(engine: Engine) -> dict[str, dict]:
    out = engine.compose("ps", "-a", "--format", "json").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rows) == 1 and isinstance(rows[0], list):
        rows = rows[0]
    return {row["Service"]: row for row in rows}


def wait_healthy(engine: Engine, names: tuple[str, ...], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = services(engine)
        if all(found.get(n, {}).get("Health") == "healthy" for n in names):
            return
        if time.monotonic() > deadline:
            logs = engine.compose("logs", "--tail", "40", check=False).stdout
            raise AssertionError(f"not healthy in {timeout:.0f}s: {found}\n{logs}")
        time.sleep(3)


def compose_up(engine: Engine) -> None:
    start = time.monotonic()
    engine.compose("up", "-d", timeout=600)
    wait_healthy(engine, ("superlink", "client-0", "client-1"))
    engine.record("compose up to healthy", f"{time.monotonic() - start:.0f} s")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    sh(["bash", str(ROOT / "deploy" / "engine" / "setup.sh")], timeout=900)
    tag = f"fedsim:enginetest-{os.getpid()}"
    env = {**os.environ, "FEDSIM_DEPLOY": str(root / "deployment"), "FEDSIM_IMAGE": tag,
           "FEDSIM_FLEET_BIND": "127.0.0.1", "FEDSIM_FLEET_PORT": str(free_port()),
           "FEDSIM_CONTROL_PORT": str(free_port()), "FEDSIM_HE_PASSPHRASE": PASSPHRASE,
           "COMPOSE_PROJECT_NAME": f"fedsimengine{os.getpid()}"}
    made = Engine(root=root, tag=tag, project=env["COMPOSE_PROJECT_NAME"], env=env,
                  images_before=image_ids())
    try:
        build(made)
        write_deployment(made)
        compose_up(made)
        yield made
    finally:
        teardown(made)


# ---------------------------------------------------------------- 4. a DP + HE run


@pytest.fixture(scope="module")
def finished(engine):
    control = f"127.0.0.1:{engine.env['FEDSIM_CONTROL_PORT']}"
    out = engine.root / "results"
    start = time.monotonic()
    try:
        done = _submit(engine, control, out)
    except AssertionError as err:
        logs = engine.compose("logs", "--no-color", "--tail", "60", check=False).stdout
        raise AssertionError(f"{err}\n---- compose logs (tail) ----\n{logs}") from None
    engine.record("DP + HE run, 2 rounds, 2 sites", f"{time.monotonic() - start:.0f} s")
    return out, done.stdout


def _submit(engine: Engine, control: str, out: Path) -> subprocess.CompletedProcess:
    """docs/deployment.md section 5, with --wait and --out (section 7)."""
    return fedsim("deploy", "submit", "--superlink", control, "--ca",
                  str(engine.deploy / "certs" / "ca.crt"), "--clients", "2",
                  "--rounds", "2", "--fraction", "1.0", "--local-epochs", "1",
                  "--batch-size", "16", "--lr", "0.2", "--dp", "--noise-multiplier", "1.0",
                  "--secure-agg", "he", "--run-name", "engine", "--wait",
                  "--timeout", str(RUN_TIMEOUT_S), "--runs", str(engine.deploy / "runs"),
                  "--out", str(out), env=engine.env, timeout=RUN_TIMEOUT_S + 60)


def test_enrollment_registered_both_sites(engine):
    log = engine.compose("logs", "enroll").stdout
    assert "client-0: registered" in log and "client-1: registered" in log, log


def test_run_completes_with_both_sites(engine, finished):
    out, stdout = finished
    assert "finished:completed" in stdout, stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["mode"] == "deployment" and summary.get("he_fingerprint")
    assert [r["round"] for r in rows if "round" in r][-1] == 2, rows
    assert (out / "model_encrypted.npz").is_file() and not (out / "model.pt").exists()
    assert (out / "privacy" / "ledger.jsonl").read_text().strip()
    assert (out / "report.html").is_file()
    engine.record("run folder", ", ".join(sorted(p.name for p in out.iterdir())))


def _secret_keys(folder: Path) -> list[str]:
    """Files under `folder` that are fedsim key files holding a secret key."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        try:
            info = key_info(path)
        except (KeyFileError, ValueError, OSError):
            continue
        if info.get("secret_key"):
            found.append(str(path))
    return found


def test_each_site_keeps_its_records_outside_the_container(engine, finished):
    """The ledger and HE journal land in the host's sites/client-N/state (compose's
    rw mount), so that a recreated container still has them."""
    for site in (0, 1):
        state = engine.deploy / "sites" / f"client-{site}" / "state"
        names = sorted(p.name for p in state.iterdir())
        assert "site-journal.jsonl" in names and f"client-{site}.jsonl" in names, names
        ledger = (state / f"client-{site}.jsonl").read_text().splitlines()
        assert len(ledger) >= 2  # one record a round it trained
        engine.record(f"client-{site} state", ", ".join(names))


def test_server_folders_hold_no_secret_key(engine, finished):
    for folder in ("runs", "he-server", "state"):
        assert _secret_keys(engine.deploy / folder) == [], folder
    assert _secret_keys(engine.deploy / "he-client")  # the check does find one
    inside = engine.compose("exec", "-T", "superlink", "sh", "-c",
                            "find / -xdev \\( -name client.key -o -name node.key "
                            "-o -name ca.key \\) 2>/dev/null", check=False).stdout
    assert inside.strip() == "", inside


# ---------------------------------------------------------------- 5. strangers


def stranger(engine: Engine, name: str, argv: list[str], *, key: Path | None = None,
             timeout: float = 90) -> tuple[int, str]:
    """Run the image's stock tools in a container on the deployment's network."""
    network = f"{engine.project}_default"
    mounts = ["-v", f"{engine.deploy / 'certs' / 'ca.crt'}:/fedsim/certs/ca.crt:ro"]
    if key is not None:
        mounts += ["-v", f"{key}:/fedsim/site/key:ro"]
    done = sh(["docker", "run", "--rm", "--name", f"{engine.project}-{name}",
               "--network", network, *mounts, engine.tag, "timeout", str(timeout),
               *argv], timeout=timeout + 60, check=False)
    return done.returncode, done.stdout + done.stderr


def stranger_keys(engine: Engine) -> Path:
    folder = engine.root / "stranger"
    if not folder.is_dir():
        fedsim("certs", "node-key", "--out", str(folder), "--name", "stranger",
               env=engine.env)
        os.chown(folder / "node.key", 10001, 10001)
        os.chmod(folder, 0o755)
    return folder


SUPERNODE = ["flower-supernode", "--superlink", "superlink:9093", "--root-certificates",
             "/fedsim/certs/ca.crt", "--max-retries", "2", "--node-config", "partition-id=9"]


def test_unenrolled_key_is_refused(engine):
    code, log = stranger(engine, "unenrolled", SUPERNODE + [
        "--auth-supernode-private-key", "/fedsim/site/key/node.key"],
        key=stranger_keys(engine))
    assert code not in (0, 124), log[-2000:]
    assert "Failed to activate SuperNode" in log, log[-2000:]
    engine.record("refused: unenrolled key", log.strip().splitlines()[-1][:160])


def test_self_registering_supernode_is_refused(engine):
    code, log = stranger(engine, "self-register", SUPERNODE, timeout=45)
    assert code != 0 and "403 Forbidden" in log and "register-node" in log, log[-2000:]
    assert "activate-node" not in log
    line = next(ln for ln in log.splitlines() if "403 Forbidden" in ln)
    engine.record("refused: self-registration", line.strip()[:160])


@pytest.mark.parametrize("door", ["superlink:9093", "superlink:9095"])
def test_stranger_cannot_register_a_key(engine, door):
    code, log = stranger(engine, f"register-{door[-4:]}", [
        "python", "-m", "fedsim", "deploy", "enroll", "/fedsim/site/key", "--superlink",
        door, "--ca", "/fedsim/certs/ca.crt"], key=stranger_keys(engine))
    assert code == 2 and "cannot register" in log, log[-2000:]
    engine.record(f"refused: `flwr supernode register` via {door}", log.strip()[-160:])
    gateway = engine.compose("logs", "superlink").stdout
    assert "refused POST /v1/control/" in gateway


def test_only_the_enrolled_sites_are_nodes(engine):
    """After all the attempts, the operator's list holds client-0 and client-1 only."""
    home = engine.root / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "e"\n[superlink.e]\n'
        f'address = "127.0.0.1:{engine.env["FEDSIM_CONTROL_PORT"]}"\n'
        f'root-certificates = "{engine.deploy / "certs" / "ca.crt"}"\n')
    flwr = str(Path(sys.executable).with_name("flwr"))
    out = sh([flwr, "supernode", "list", "e", "--format", "json"],
             env={**engine.env, "FLWR_HOME": str(home)}).stdout
    nodes = json.loads(out[out.find("{"):])["nodes"]
    assert len(nodes) == 2, nodes


# ---------------------------------------------------------------- teardown


def teardown(engine: Engine) -> None:
    """Remove the containers, networks and images the test made; check they are gone."""
    logs = engine.compose("logs", "--no-color", "--timestamps", check=False)
    (engine.root / "compose.log").write_text(logs.stdout + logs.stderr)
    engine.record("compose logs", str(engine.root / "compose.log"))
    engine.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
    for name in ("unenrolled", "self-register", "register-9093", "register-9095"):
        sh(["docker", "rm", "-f", f"{engine.project}-{name}"], check=False)
    sh(["docker", "rmi", "-f", engine.tag], check=False)
    new = sorted(image_ids() - engine.images_before)
    if new:
        sh(["docker", "rmi", "-f", *new], check=False)
    label = f"label=com.docker.compose.project={engine.project}"
    left = {what: sh(["docker", what, "ls", "-a", "-q", "--filter", label] if what in (
        "container",) else ["docker", what, "ls", "-q", "--filter", label]).stdout.split()
        for what in ("container", "network", "volume")}
    left["image"] = sorted(image_ids() - engine.images_before)
    engine.record("left behind", json.dumps(left))
    assert not any(left.values()), left
