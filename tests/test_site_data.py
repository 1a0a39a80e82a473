"""`fedsim deploy site-data`, the gateway's doors, and small deployment fixes."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedsim.client.local_data import SiteSpec, site_data
from fedsim.deploy.gateway import (
    SELF_REGISTER_PATH,
    control_door,
    control_peers,
    default_gateway,
    fleet_door,
    parse_args,
)
from fedsim.deploy.sitedata import import_files, partition_rows, write_partition
from fedsim.errors import DatasetError
from tests.conftest import fedsim_cmd

ROOT = Path(__file__).resolve().parents[1]


def test_partitions_are_disjoint_and_cover_everything():
    shares = [partition_rows(101, partition=i, partitions=3, seed=4) for i in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(101))
    assert {len(s) for s in shares} <= {33, 34}
    with pytest.raises(DatasetError, match="--partition must be in 0..2"):
        partition_rows(10, partition=3, partitions=3, seed=0)


def test_a_partition_is_read_by_the_site_as_written(tmp_path):
    made = write_partition(dataset="digits", partition=1, partitions=2,
                           out=tmp_path / "data")
    assert made.shape == (1, 8, 8) and made.labels == tuple(range(10))
    spec = SiteSpec(folder=str(tmp_path / "data"), dataset="digits", client_id=1,
                    seed=3, val_fraction=0.2, input_shape=(1, 8, 8), num_classes=10)
    data = site_data(spec)
    assert len(data.y_train) + len(data.y_val) == made.examples
    assert oct((tmp_path / "data" / "data.npz").stat().st_mode & 0o777) == "0o644"


def test_own_files_are_checked_before_anything_is_written(tmp_path):
    x = np.zeros((5, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=np.array([0, 1, 2, 3, 11]))
    out = tmp_path / "site"
    with pytest.raises(DatasetError, match="labels 0..11"):
        import_files(source=tmp_path / "mine.npz", dataset="digits", out=out)
    assert not out.exists() and not (tmp_path / "site.checking").exists()
    np.savez(tmp_path / "mine.npz", x=x, y=np.array([0, 1, 2, 3, 9]))
    made = import_files(source=tmp_path / "mine.npz", dataset="digits", out=out)
    assert made.examples == 5 and (out / "data.npz").is_file()
    with pytest.raises(DatasetError, match="already holds files"):
        import_files(source=tmp_path / "mine.npz", dataset="digits", out=out)


def test_site_data_cli_one_line_errors(tmp_path):
    done = subprocess.run(fedsim_cmd("deploy", "site-data", "--out", str(tmp_path / "d")),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--partition I --partitions N" in done.stderr + done.stdout


def test_fleet_door_passes_the_fleet_api_only():
    door = fleet_door()
    assert door.refusal("/v1/fleet/pull-messages", "203.0.113.9") is None
    assert door.refusal("/health", "203.0.113.9") is None
    for path in (SELF_REGISTER_PATH, "/v1/control/start-run", "/v1/runtime/pull-messages",
                 "/v1/fleetx", "/"):
        assert door.refusal(path, "127.0.0.1"), path


def test_control_door_passes_the_control_api_from_allowed_peers_only():
    door = control_door(control_peers(["10.8.0.0/24"], host_gateway=False))
    assert door.refusal("/v1/control/start-run", "127.0.0.1") is None
    assert door.refusal("/v1/control/start-run", "10.8.0.7") is None
    assert door.refusal("/v1/control/start-run", "::ffff:127.0.0.1") is None
    assert "not allowed" in door.refusal("/v1/control/start-run", "172.18.0.3")
    assert "not allowed" in door.refusal("/v1/control/start-run", None)
    assert "not served" in door.refusal("/v1/fleet/pull-messages", "127.0.0.1")


def test_default_gateway_from_the_route_table(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway\tFlags\n"
                     "eth0\t0012A8C0\t00000000\t0001\n"
                     "eth0\t00000000\t0100A8C0\t0003\n")
    assert default_gateway(table) == "192.168.0.1"
    assert default_gateway(tmp_path / "absent") is None


def test_gateway_arguments_and_the_superlink_command():
    setup, command = parse_args(["--cert", "c", "--key", "k", "--ca", "a",
                                 "--control-allow", "10.0.0.0/8", "--",
                                 "flower-superlink", "--port", "9091"])
    assert setup.control_allow == ("10.0.0.0/8",) and setup.upstream.endswith(":9091")
    assert command == ["flower-superlink", "--port", "9091"]
    with pytest.raises(SystemExit):
        parse_args(["--cert", "c", "--key", "k", "--ca", "a", "--control-allow", "x"])


def test_the_wheel_carries_the_flower_app_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pyproject.toml" in project["tool"]["setuptools"]["package-data"]["fedsim.deploy"]


def test_a_deployment_report_does_not_miss_partitions(tmp_path):
    from fedsim.reports.load import load_run

    (tmp_path / "config.json").write_text(json.dumps({"rounds": 1}))
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "summary.json").write_text(json.dumps({"mode": "deployment",
                                                       "finished": True}))
    warnings = load_run(tmp_path).warnings
    assert not any("partitions.json" in w for w in warnings), warnings
    (tmp_path / "summary.json").write_text(json.dumps({"finished": True}))
    assert any("partitions.json" in w for w in load_run(tmp_path).warnings)


def test_certs_init_names_each_address_once(tmp_path):
    done = subprocess.run(fedsim_cmd("certs", "init", "--out", str(tmp_path / "c"),
                                     "--server-name", "localhost", "--clients", "0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "localhost, 127.0.0.1" in done.stdout
    assert "localhost, localhost" not in done.stdout


def test_waiting_for_a_run_survives_a_few_failed_polls(monkeypatch):
    from fedsim.deploy import control
    from fedsim.deploy.flwr_cli import Connection, DeployError

    replies = [DeployError("busy"), DeployError("busy"),
               control.RunState(run_id=7, status="running"),
               control.RunState(run_id=7, status="finished:completed")]

    def fake_state(conn, run_id):
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(control, "run_state", fake_state)
    conn = Connection(address="x:1", ca=Path("ca.crt"))
    assert control.wait_for(conn, 7, timeout=10, poll=0).completed
    replies[:] = [DeployError("down")] * 3
    with pytest.raises(DeployError, match="down"):
        control.wait_for(conn, 7, timeout=10, poll=0, tolerate=2)
