"""A real deployment on 127.0.0.1: fedsim-superlink and flower-supernode processes.

The certificates and site keys come from `fedsim certs init`, the commands from
fedsim.deploy.commands (the ones docker-compose.yml runs), the run from
`fedsim deploy submit` (which drives `flwr run` on the deploy app). Four enrolled
sites join one 3-round DP run: two train (site 0 under a policy whose epsilon
cap the run respects, site 1 without a policy), site 2 has no data folder, site
3's policy requires secure aggregation. That run's ServerApp is killed in its
second round and the run continued by `fedsim deploy submit --resume`. A second,
1-round run, in flight at the same time on the same sites, adds CKKS secure
aggregation (keys from `fedsim keys init`; the server gets server.ctx only): site 3
trains too.
Three more SuperNodes must be turned away: an unenrolled key, no CA, a wrong CA.
Every process runs in its own process group and is killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.client.local_data import SiteSpec, hashed_ids, site_data
from fedsim.deploy import commands
from fedsim.deploy.app import he_plan
from fedsim.deploy.control import app_folder, run_config_arg
from fedsim.deploy.flwr_cli import Connection, connection_toml
from fedsim.deploy.health import probe
from fedsim.deploy.pki import CertLayout, CertPlan, init_certs, write_node_keys
from fedsim.deploy.runconfig import app_defaults, deploy_plan, model_spec, overrides_for
from fedsim.errors import ConfigError, DatasetError
from tests.conftest import fedsim_cmd

RUN_TIMEOUT_S = 720  # a hang guard: an HE run took 150-390 s here, alone or in the suite
START_TIMEOUT_S = 40
REFUSED_TIMEOUT_S = 60
SITES = 4
# Site 0 caps epsilon (the run stays below it, judged on site 0's own data size);
# site 3 requires secure aggregation, which the run does not use.
PERMISSIVE_POLICY = ('[dp]\nrequired = true\nmax-epsilon = 20.0\n'
                     '[run]\nmodels = ["cnn", "dp-cnn"]\nmax-rounds = 5\n')
HE_POLICY = "[he]\nrequired = true\n"
HE_PASSPHRASE = "deployment test passphrase"
TURNED_AWAY = ("unenrolled", "no-ca", "wrong-ca")


# ---------------------------------------------------------------- pieces, no processes


def site_spec(folder: Path, **changes) -> SiteSpec:
    base = dict(folder=str(folder), dataset="digits", client_id=0, seed=1,
                val_fraction=0.2, input_shape=(1, 8, 8), num_classes=10)
    return SiteSpec(**(base | changes))


def test_site_npz_is_read_and_split(tmp_path):
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(20) % 10)
    data = site_data(site_spec(tmp_path))
    assert len(data.y_train) == 16 and len(data.y_val) == 4
    assert site_data(site_spec(tmp_path)) is data  # cached per process
    other = site_data(site_spec(tmp_path, seed=2))
    assert not np.array_equal(other.x_val, data.x_val)  # the split follows the seed
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1:] == (1, 8, 8)


def test_site_image_folder_uses_the_dataset_class_names(tmp_path):
    from PIL import Image

    for label in ("3", "7"):
        (tmp_path / label).mkdir()
        for i in range(3):
            pixels = np.full((8, 8), 40 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    data = site_data(site_spec(tmp_path))
    labels = np.concatenate([data.y_train, data.y_val])
    assert sorted(labels.tolist()) == [3, 3, 3, 7, 7, 7]
    assert data.x_train.max() <= 1.0


def test_site_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8), dtype=np.uint8)
    sizes = b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    header = bytes([0, 0, 8, 3]) + sizes
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    labels = (np.arange(10) % 10).astype(np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + labels.tobytes())
    data = site_data(site_spec(tmp_path))
    assert len(data.y_train) + len(data.y_val) == 10


def test_site_text_csv_is_hashed_identically_everywhere(tmp_path):
    (tmp_path / "data.csv").write_text(
        "text,label\nstocks fell sharply,business\nthe match ended,sports\n"
        "new phone released,tech\nvote counted,politics\n")
    spec = site_spec(tmp_path, dataset="bbc-news", input_shape=(6,), num_classes=5,
                     vocab_size=20_000)
    data = site_data(spec)
    assert data.x_train.shape[1] == 6 and data.x_train.max() < 20_000
    ids = hashed_ids(["Stocks fell"], vocab_size=20_000, max_len=3)
    assert ids.tolist() == hashed_ids(["stocks FELL!"], vocab_size=20_000,
                                      max_len=3).tolist()


@pytest.mark.parametrize(("prepare", "expected"), [
    (None, "does not exist; put data.npz"),
    ("empty", "holds none of: data.npz"),
    ("shape", "the run's model expects (1, 8, 8)"),
    ("labels", "the run has classes 0..9"),
    ("class", "class 'cats' is not one of the dataset's classes"),
])
def test_bad_site_folders_are_one_line_errors(tmp_path, prepare, expected):
    folder = tmp_path / "site"
    if prepare == "empty":
        folder.mkdir()
    elif prepare in ("shape", "labels"):
        folder.mkdir()
        shape = (4, 1, 4, 4) if prepare == "shape" else (4, 1, 8, 8)
        np.savez(folder / "data.npz", x=np.zeros(shape, np.float32),
                 y=np.array([0, 1, 2, 12 if prepare == "labels" else 3]))
    elif prepare == "class":
        (folder / "cats").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        site_data(site_spec(folder))
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(folder) in str(err.value)


def test_run_config_maps_to_fedsim_config():
    plan = deploy_plan({"clients": 3, "rounds": 2, "dp": True, "noise-multiplier": "",
                        "target-epsilon": 8.0, "out": "/srv/runs", "run-name": "",
                        "num-classes": "", "input-shape": ""}, run_id=7)
    assert plan.config.clients == 3 and plan.config.dp
    assert plan.config.noise_multiplier is None and plan.config.target_epsilon == 8.0
    assert plan.out == Path("/srv/runs") and plan.run_name == "run-7"
    spec = model_spec(plan)
    assert spec.input_shape == (1, 8, 8) and spec.num_classes == 10


def test_run_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        deploy_plan({"partition": "iid", "rounds": 0, "colour": "red",
                     "run-name": "../etc", "num-classes": "x"}, run_id=1)
    message = str(err.value)
    assert "run-name must be a plain folder name" in message
    assert "num-classes must be a positive whole number" in message
    assert "applies to simulations only" in message
    assert "unknown run config key 'colour'" in message
    assert "rounds must be > 0" in message


def test_text_and_shapeless_datasets():
    text = model_spec(deploy_plan({"dataset": "bbc-news", "model": "text",
                                   "max-len": 32}, run_id=1))
    assert text.input_shape == (32,) and text.vocab_size == 20_000
    with pytest.raises(ConfigError, match="set input-shape and num-classes"):
        model_spec(deploy_plan({"dataset": "imagefolder"}, run_id=1))
    own = model_spec(deploy_plan({"dataset": "imagefolder", "input-shape": "3,16,16",
                                  "num-classes": 4}, run_id=1))
    assert own.input_shape == (3, 16, 16) and own.num_classes == 4


def test_operator_overrides_are_checked_as_the_server_will():
    defaults = app_defaults(app_folder())
    given = {"rounds": 4, "dp": True, "epsilon_budget": 5.0, "run-name": "x"}
    items = overrides_for(defaults, given)
    assert items == {"rounds": 4, "dp": True, "epsilon-budget": 5.0, "run-name": "x"}
    plan = deploy_plan({**defaults, **items}, run_id=1)
    assert plan.config.epsilon_budget == 5.0 and plan.run_name == "x"
    assert plan.config.clients == defaults["clients"]  # the app's, not 100
    assert plan.config.noise_multiplier == 1.0  # --dp's default, as in `fedsim run`
    with pytest.raises(ConfigError, match="not a deployment option: partition"):
        overrides_for(defaults, {"partition": "iid"})
    with pytest.raises(ConfigError, match="rounds must be > 0"):
        overrides_for(defaults, {"rounds": 0})
    arg = run_config_arg({"a": True, "b": 2, "c": 0.5, "d": "", "e": "x y"})
    assert arg == 'a=true b=2 c=0.5 d="" e="x y"'


def test_he_plan_reads_only_the_public_context(tmp_path):
    from fedsim.privacy.he import PARAMETER_SETS
    from fedsim.privacy.keys import provision

    keys = provision(tmp_path, params=PARAMETER_SETS["compact"], passphrase="pw")
    public = str(keys.server_context_path)
    plan = deploy_plan({"secure-agg": "he", "he-context": public}, run_id=1)
    he = he_plan(plan)
    assert he.fingerprint == keys.fingerprint and he.passphrase_file is None
    wrong = deploy_plan({"secure-agg": "he", "he-context": str(keys.client_key_path)},
                        run_id=1)
    with pytest.raises(ConfigError, match="is not a public server.ctx"):
        he_plan(wrong)
    with pytest.raises(ConfigError, match="no he-context"):
        he_plan(deploy_plan({"secure-agg": "he", "he-context": ""}, run_id=1))


def test_flower_connection_file(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    text = connection_toml(Connection(address="lead.example:9093", ca=ca))
    assert 'default = "fedsim"' in text and 'address = "lead.example:9093"' in text
    assert f'root-certificates = "{ca.resolve()}"' in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Processes:
    """Processes of one test module: own process groups, logs, killed at the end."""

    root: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, name: str) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "FLWR_HOME": str(self.root / "homes" / name), "PYTHONUNBUFFERED": "1"}
        env.pop("FEDSIM_HE_PASSPHRASE", None)
        if name.startswith("site-") or name == "keys":  # never the server's side
            env["FEDSIM_HE_PASSPHRASE"] = HE_PASSPHRASE
        return env

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, env=self.env(name), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.started.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _kill_detached(self.root)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _kill_detached(root: Path) -> None:
    """The SuperLink starts its SuperExec in a new session; kill any still alive.

    Found by our temporary folder in their command line (the CA path), by pid.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(root).encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(check, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(0.5)


def healthy(url: str, ca: str | None = None) -> bool:
    """The health check the compose file runs, called in-process (no interpreter)."""
    return probe(url, ca=ca, timeout=2.0) is None


def write_sites(root: Path) -> dict[int, Path]:
    """Digits as data.npz for sites 0, 1, 3; site 2's folder is never made."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    folders = {}
    for site in range(SITES):
        folders[site] = root / "sites" / f"client-{site}" / "data"
        if site != 2:
            folders[site].mkdir(parents=True)
            rows = slice(site * 300, site * 300 + 300)
            np.savez(folders[site] / "data.npz", x=x[rows], y=digits.target[rows])
    return folders


def write_policies(root: Path) -> dict[int, Path]:
    policies = {0: root / "policy-0.toml", 3: root / "policy-3.toml"}
    policies[0].write_text(PERMISSIVE_POLICY)
    policies[3].write_text(HE_POLICY)
    return policies


@dataclass(frozen=True)
class Cluster:
    root: Path
    layout: CertLayout
    superlink: str
    procs: Processes

    @property
    def ca(self) -> str:
        return str(self.layout.ca_cert)

    @property
    def he_dir(self) -> Path:
        return self.root / "he"


def _he_keys(procs: Processes, root: Path) -> None:
    argv = fedsim_cmd("keys", "init", "--out", str(root / "he"), "--params", "compact")
    subprocess.run(argv, check=True, capture_output=True, timeout=120,
                   env=procs.env("keys"))


def _certs(root: Path) -> CertLayout:
    argv = fedsim_cmd("certs", "init", "--out", str(root / "certs"), "--server-name",
                      "localhost", "--clients", str(SITES), "--days", "2")
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return CertLayout(root=root / "certs")


def _start_superlink(procs: Processes, layout: CertLayout, port: int) -> None:
    setup = commands.SuperLinkSetup(
        ca=str(layout.ca_cert), cert=str(layout.server_cert),
        key=str(layout.server_key), database=str(procs.root / "state" / "superlink.db"),
        host="127.0.0.1", port=port)
    (procs.root / "state").mkdir()
    procs.start("superlink", commands.superlink_argv(setup))
    url = commands.superlink_health_url(port=port)
    wait_until(lambda: healthy(url, str(layout.ca_cert)), timeout=START_TIMEOUT_S,
               what="SuperLink health")


def _start_sites(cluster: Cluster) -> None:
    folders, policies = write_sites(cluster.root), write_policies(cluster.root)
    urls = []
    for site in range(SITES):
        port = free_port()
        setup = commands.SiteSetup(
            superlink=cluster.superlink, ca=cluster.ca,
            node_key=str(cluster.layout.node_key(f"client-{site}")), partition_id=site,
            data_dir=str(folders[site]),
            policy=str(policies[site]) if site in policies else None, runtime_port=port,
            he_key=str(cluster.he_dir / "client.key"))
        cluster.procs.start(f"site-{site}", commands.supernode_argv(setup))
        urls.append(commands.supernode_health_url(port))
    for url in urls:
        wait_until(lambda u=url: healthy(u), timeout=START_TIMEOUT_S, what=url)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    procs = Processes(root)
    try:
        layout, port = _certs(root), free_port()
        _start_superlink(procs, layout, port)
        found = Cluster(root=root, layout=layout, superlink=f"127.0.0.1:{port}",
                        procs=procs)
        enroll = commands.enroll_argv(superlink=found.superlink, ca=found.ca,
                                      keys_dir=str(layout.public_dir),
                                      python=sys.executable)
        done = subprocess.run(enroll, capture_output=True, text=True, timeout=120,
                              env=procs.env("enroll"))
        assert done.returncode == 0, done.stderr
        _start_turned_away(found)
        _he_keys(procs, root)
        _start_sites(found)
        yield found
    finally:
        procs.stop_all()


# ---------------------------------------------------------------- turned away


def _start_turned_away(cluster: Cluster) -> None:
    """Three SuperNodes the SuperLink must refuse: unenrolled key, no CA, wrong CA."""
    other = init_certs(CertPlan(out=cluster.root / "other-certs",
                                server_names=("localhost",), clients=0)).layout
    stranger = write_node_keys(CertLayout(root=cluster.root / "stranger"), "stranger")
    enrolled_key = str(cluster.layout.node_key("client-1"))
    cases = {"unenrolled": (cluster.ca, str(stranger.private_path)),
             "no-ca": (None, enrolled_key),
             "wrong-ca": (str(other.ca_cert), enrolled_key)}
    for name, (ca, key) in cases.items():
        setup = commands.SiteSetup(superlink=cluster.superlink, ca=ca, node_key=key,
                                   partition_id=9, data_dir=str(cluster.root),
                                   runtime_port=free_port())
        cluster.procs.start(name, commands.supernode_argv(setup))


@pytest.fixture(scope="module")
def turned_away(cluster):
    """Exit codes and logs of the three refused SuperNodes (None: still running)."""
    found = {}
    for name in TURNED_AWAY:
        proc = cluster.procs.started[name]
        try:
            found[name] = (proc.wait(REFUSED_TIMEOUT_S), cluster.procs.log(name))
        except subprocess.TimeoutExpired:
            found[name] = (None, cluster.procs.log(name))
    return found


def test_unenrolled_node_is_refused(turned_away):
    code, log = turned_away["unenrolled"]
    assert code not in (None, 0), log[-2000:]
    assert "Failed to activate SuperNode" in log
    assert "CERTIFICATE_VERIFY_FAILED" not in log  # TLS was fine; the key was not


def test_node_without_the_ca_cannot_connect(turned_away):
    code, log = turned_away["no-ca"]
    assert code not in (None, 0), log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in log


def test_node_with_another_ca_cannot_connect(turned_away):
    code, log = turned_away["wrong-ca"]
    assert code not in (None, 0), log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in log


# ---------------------------------------------------------------- one real run


@dataclass(frozen=True)
class FinishedRun:
    folder: Path
    rows: list[dict]
    summary: dict
    server_log: str
    submit_output: str


@dataclass(frozen=True)
class Submission:
    proc: subprocess.Popen  # `fedsim deploy submit --wait`
    finish: Callable[[], FinishedRun]  # waits for the run, collects its folder


def _submit(cluster: Cluster, name: str, *extra: str, rounds: int = 2,
            resume: bool = False) -> Submission:
    """Submit a DP run to all sites (or `resume` it), without waiting for it.

    Each submission has its own operator folder ($FLWR_HOME), so that two runs can be
    in flight at once, as two users of one federation would have them.
    """
    server_runs, collected = cluster.root / "server-runs", cluster.root / f"got-{name}"
    options = ["--resume"] if resume else [
        "--clients", str(SITES), "--rounds", str(rounds), "--fraction", "1.0",
        "--local-epochs", "1", "--batch-size", "16", "--lr", "0.2", "--dp",
        "--noise-multiplier", "1.0", *extra]
    argv = fedsim_cmd(
        "deploy", "submit", "--superlink", cluster.superlink, "--ca", cluster.ca,
        *options,
        "--run-name", name, "--server-out", str(server_runs), "--wait",
        "--timeout", str(RUN_TIMEOUT_S - 20), "--runs", str(server_runs),
        "--out", str(collected))
    env = cluster.procs.env(f"operator-{name}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)

    def finish() -> FinishedRun:
        """Wait for the run (killing its submission past the hang guard), collect it."""
        try:
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
        run_id = stdout.split("run ", 1)[1].split()[0]
        log = subprocess.run(fedsim_cmd("deploy", "log", run_id, "--superlink",
                                        cluster.superlink, "--ca", cluster.ca),
                             capture_output=True, text=True, timeout=120, env=env)
        rows = [json.loads(line) for line in
                (collected / "metrics.jsonl").read_text().splitlines()]
        return FinishedRun(folder=collected, rows=rows, server_log=log.stdout,
                           summary=json.loads((collected / "summary.json").read_text()),
                           submit_output=stdout)

    return Submission(proc=proc, finish=finish)


def _holder_of(lock: Path) -> int:
    """The pid of the process that holds this file open (the run folder's lock)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == str(lock):
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError(f"no process holds {lock}")


def _crash_after_first_round(cluster: Cluster, name: str) -> int:
    """SIGKILL the run's ServerApp once round 1 is checkpointed; its Flower run id.

    The ServerApp is found by the run folder lock it holds. (Not `flwr stop`: a stop
    that lands while a SuperNode is receiving one of the run's messages leaves that
    SuperNode waiting forever in Flower 1.41; docs/deployment.md, troubleshooting.)
    """
    folder = cluster.root / "server-runs" / name
    wait_until(lambda: (folder / "checkpoint" / "state.json").is_file(),
               timeout=RUN_TIMEOUT_S, what=f"round 1 of {name}")
    os.kill(_holder_of((folder / ".lock").resolve()), signal.SIGKILL)
    return json.loads((folder / "deployment.json").read_text())["flower_runs"][0]


def _check_stopped(name: str, submission: Submission) -> None:
    """The crashed run's `submit --wait` ends with exit 2 and says how to go on.

    (Flower marks the run failed once its ServerApp's heartbeats stop, ~60 s.)"""
    stdout, stderr = submission.proc.communicate(timeout=RUN_TIMEOUT_S)
    assert submission.proc.returncode == 2, stdout + stderr
    assert f"submit --resume --run-name {name}" in stderr


@pytest.fixture(scope="module")
def both_runs(cluster, turned_away) -> dict[str, FinishedRun]:
    """Two runs in flight at once on the same four sites: a 2-round DP run whose
    ServerApp is killed in round 2 and which a second Flower run continues
    (`--resume`), and a 1-round DP + HE run (its evaluation already has every site
    decrypt and verify the aggregate; the plaintext run covers a second round's
    history). Each site keeps its ledger and HE journal per run."""
    # a seed and validation share other than the app's defaults: the continuation's
    # own Flower run config holds the defaults, the sites must split as the run did
    runs = {"e2e": _submit(cluster, "e2e", "--seed", "7", "--val-fraction", "0.2"),
            "e2e-he": _submit(cluster, "e2e-he", "--secure-agg", "he", "--he-context",
                              str(cluster.he_dir / "server.ctx"), rounds=1)}
    crashed = runs["e2e"]
    try:
        _crash_after_first_round(cluster, "e2e")
        runs["e2e"] = _submit(cluster, "e2e", resume=True)
        _check_stopped("e2e", crashed)
        return {name: run.finish() for name, run in runs.items()}
    finally:  # one that failed leaves no other submission waiting
        for run in (crashed, *runs.values()):
            run.proc.kill()


@pytest.fixture(scope="module")
def finished_run(both_runs):
    return both_runs["e2e"]


@pytest.fixture(scope="module")
def finished_he_run(both_runs):
    return both_runs["e2e-he"]


def test_run_folder_is_complete(finished_run):
    folder = finished_run.folder
    for name in ("config.json", "metrics.jsonl", "model.pt", "summary.json",
                 "report.html", "report.md", "deployment.json"):
        assert (folder / name).is_file(), name
    assert [row["round"] for row in finished_run.rows] == [1, 2]
    assert finished_run.summary["finished"] is True
    assert finished_run.summary["rounds_completed"] == 2
    assert finished_run.summary["mode"] == "deployment"
    assert finished_run.summary["resumed_from_round"] == 1  # killed in round 2
    config = json.loads((folder / "config.json").read_text())
    assert config["rounds"] == 2 and config["clients"] == SITES and config["dp"]


def test_resumed_run_splits_the_sites_data_as_the_run_did(finished_run):
    # 2 evaluating sites x 300 digits: val-fraction 0.2 holds out 60 rows each (the
    # app's default 0.1, which the continuation's Flower run config holds: 30)
    first, resumed = (row["fed_examples"] for row in finished_run.rows)
    assert first == resumed == 2 * 60
    config = json.loads((finished_run.folder / "config.json").read_text())
    assert config["seed"] == 7 and config["val_fraction"] == 0.2


def test_resumed_run_keeps_its_first_flower_runs_name(finished_run):
    deployment = json.loads((finished_run.folder / "deployment.json").read_text())
    first, second = deployment["flower_runs"]
    assert first != second
    assert deployment["run_id"] == f"flower-{first}"
    ledger = finished_run.folder / "privacy" / "ledger.jsonl"
    assert {json.loads(line)["run"] for line in ledger.read_text().splitlines()} == {
        f"flower-{first}"}


def test_privacy_ledger_records_the_training_sites(cluster, finished_run):
    ledger = finished_run.folder / "privacy" / "ledger.jsonl"
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert sorted((r["round"], r["client_id"]) for r in records) == [
        (1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(0 < r["epsilon"] < 20.0 for r in records)  # site 0's cap holds
    first, second = json.loads(
        (finished_run.folder / "deployment.json").read_text())["flower_runs"]
    # Each site kept its own ledger in its own Flower folder, written before each
    # reply left it, under the run's one name across both Flower runs. It holds the
    # releases the server recorded and any the crash cut off (a round-2 reply of the
    # first Flower run, never summed): those count there too.
    for site in (0, 1):
        own = cluster.root / "homes" / f"site-{site}" / "fedsim-privacy" / \
            f"client-{site}.jsonl"
        mine = [r for r in records if r["client_id"] == site]
        kept = [json.loads(line) for line in own.read_text().splitlines()]
        kept = [r for r in kept if r["run"] == mine[0]["run"] and r["released"]]
        assert {r["flower_run"] for r in kept} == {f"flower-{first}", f"flower-{second}"}
        assert {r["release"] for r in mine} <= {r["release"] for r in kept}
        lost = [r for r in kept if r["release"] not in {m["release"] for m in mine}]
        assert all(r["round"] == 2 and r["flower_run"] == f"flower-{first}" for r in lost)
        assert len(kept) == len(mine) + len(lost)
        assert kept[-1]["epsilon"] >= mine[-1]["epsilon"] * (1 - 1e-12)
        if not lost:
            assert kept[-1]["epsilon"] == pytest.approx(mine[-1]["epsilon"], rel=1e-12)


def test_final_model_is_a_trained_cnn(finished_run):
    state = torch.load(finished_run.folder / "model.pt", weights_only=True)
    assert "features.0.weight" in state
    assert all(torch.isfinite(t).all() for t in state.values())
    assert finished_run.rows[-1]["train_loss"] is None  # not sent under DP


def test_missing_data_and_policy_count_as_failed_others_train(finished_run):
    for row in finished_run.rows:
        assert row["clients_sampled"] == SITES
        assert row["clients_replied"] == 2  # sites 0 and 1
        # site 2 (no data) and site 3 (policy) fail in training and in evaluation
        assert row["failed"] == 4


def test_server_log_names_each_failure(finished_run):
    log = finished_run.server_log
    assert "client 3 refused by site policy" in log
    assert "no secure aggregation" in log
    assert "client 2: site data folder" in log and "does not exist" in log
    assert "client 0 refused" not in log and "client 1 refused" not in log
    # each line once (Opacus' import used to add a root handler: every line twice)
    # the resumed Flower run's log: round 2 only
    assert log.count("[ROUND 1/1]") == 1, log
    assert log.count("client 3 failed") == 2, log


def test_sites_log_their_own_side(cluster, finished_run):
    logs = {site: cluster.procs.log(f"site-{site}") for site in range(SITES)}
    assert "runs unrestricted" in logs[1]
    # once per run, not per message (the run sends site 1 four messages; the HE run
    # may already have happened when this test runs)
    assert 1 <= logs[1].count("runs unrestricted") <= 3  # 3 Flower runs
    assert "refused by site policy" in logs[3]
    assert "refused by site policy" not in logs[0]
    assert "does not exist" in logs[2]


def test_app_folder_shadows_no_standard_module():
    """`flwr run deploy/` puts deploy/ on sys.path while it imports the app."""
    stems = {p.stem for p in app_folder().glob("*.py")}
    assert not stems & set(sys.stdlib_module_names)


# ---------------------------------------------------------------- secure aggregation


def test_he_run_trains_the_site_that_requires_he(finished_he_run):
    assert [row["round"] for row in finished_he_run.rows] == [1]
    assert finished_he_run.summary["finished"] is True
    for row in finished_he_run.rows:
        assert row["clients_replied"] == 3  # sites 0, 1 and 3
        assert row["failed"] == 2  # site 2 (no data), in training and evaluation
        assert row["rejected"] == 0
    ledger = finished_he_run.folder / "privacy" / "ledger.jsonl"
    trained = {json.loads(line)["client_id"] for line in ledger.read_text().splitlines()}
    assert trained == {0, 1, 3}
    assert "client 3 refused" not in finished_he_run.server_log


def test_he_run_server_holds_ciphertexts_only(finished_he_run):
    folder = finished_he_run.folder
    assert (folder / "model_encrypted.npz").is_file()
    assert not (folder / "model.pt").exists()
    assert finished_he_run.summary["model_encrypted"] is True
    assert not list(folder.rglob("client.key"))
    config = json.loads((folder / "config.json").read_text())
    assert config["secure_agg"] == "he"
