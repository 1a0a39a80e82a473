"""Resuming a deployed run: the run config key, the reopened folder, the CLI's checks.

A real SuperLink run stopped and resumed is in tests/test_deploy.py; the sites'
accounting of a resumed run is attacked in tests/attacks/test_site_ledger_attack.py.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from flwr.app import ArrayRecord

from fedsim.deploy.app import server_plan
from fedsim.deploy.control import app_folder
from fedsim.deploy.runconfig import app_defaults, deploy_plan
from fedsim.deploy.rundir import DeployRecorder
from fedsim.errors import ConfigError
from fedsim.fedmodels.models import build_model
from tests.conftest import fedsim_cmd

FIRST, SECOND = 11, 12


def plan_for(tmp_path, run_id: int, **changes):
    values = {**app_defaults(app_folder()), "run-name": "r1", "out": str(tmp_path),
              "dp": True, "rounds": 3, **changes}
    return deploy_plan(values, run_id=run_id)


def started_run(tmp_path, *, rounds_done: int = 1, **changes):
    """A run folder as a first Flower run leaves it after `rounds_done` rounds."""
    plan = plan_for(tmp_path, FIRST, **changes)
    recorder = DeployRecorder.create(plan)
    splan = server_plan(plan, recorder.run_dir)
    recorder.write_config(splan)
    arrays = ArrayRecord(build_model(splan.model).state_dict())
    for r in range(1, rounds_done + 1):
        recorder.on_round({"round": r, "accuracy": 0.5})
        recorder.on_checkpoint(r, arrays)
    recorder.close()  # its ServerApp ended (a crash: the kernel drops the lock)
    return recorder.run_dir, arrays


def test_resume_is_a_checked_run_config_key(tmp_path):
    assert plan_for(tmp_path, 1, resume=True).resume is True
    assert plan_for(tmp_path, 1).resume is False
    with pytest.raises(ConfigError, match="resume must be true or false"):
        plan_for(tmp_path, 1, resume="yes")
    with pytest.raises(ConfigError, match="give its run-name"):
        plan_for(tmp_path, 1, resume=True, **{"run-name": ""})


def test_reopened_run_goes_on_with_its_own_config_and_first_name(tmp_path):
    run_dir, arrays = started_run(tmp_path)
    resumed = plan_for(tmp_path, SECOND, resume=True, rounds=9, lr=0.5)
    recorder, cont = DeployRecorder.reopen(resumed)
    assert recorder.run_dir == run_dir
    assert cont.run_id == f"flower-{FIRST}"  # what every site accounts the run under
    assert cont.plan.config.rounds == 3 and cont.plan.config.lr != 0.5
    assert cont.checkpoint.round == 1 and [r["round"] for r in recorder.rows] == [1]
    splan = server_plan(cont.plan, run_dir, cont)
    assert splan.run_id == f"flower-{FIRST}" and splan.resume_round == 1
    for key in arrays.keys():
        assert torch.equal(torch.from_numpy(splan.resume_arrays[key]),
                           torch.from_numpy(arrays[key].numpy()))
    deployment = json.loads((run_dir / "deployment.json").read_text())
    assert deployment["run_id"] == f"flower-{FIRST}"
    assert deployment["flower_runs"] == [FIRST, SECOND]
    recorder.close()


def test_resume_names_the_submitted_options_it_does_not_use(tmp_path, caplog):
    started_run(tmp_path)
    with caplog.at_level("WARNING", logger="fedsim.deploy"):
        DeployRecorder.reopen(plan_for(tmp_path, SECOND, resume=True, rounds=9))[0].close()
    assert "the submission's rounds differ and are not used" in caplog.text


def test_a_run_folder_has_one_server_app_at_a_time(tmp_path):
    run_dir, _ = started_run(tmp_path)
    holder, _ = DeployRecorder.reopen(plan_for(tmp_path, SECOND, resume=True))
    with pytest.raises(ConfigError, match=f"in use by Flower run {SECOND}"):
        DeployRecorder.reopen(plan_for(tmp_path, 13, resume=True))
    with pytest.raises(ConfigError, match="in use by Flower run"):
        DeployRecorder.create(plan_for(tmp_path, 14))
    holder.close()
    DeployRecorder.reopen(plan_for(tmp_path, 15, resume=True))[0].close()
    runs = json.loads((run_dir / "deployment.json").read_text())["flower_runs"]
    assert runs == [FIRST, SECOND, 15]  # the refused ones left no trace


def test_resume_keeps_the_models_shape_and_classes(tmp_path):
    shaped = {"dataset": "imagefolder", "input-shape": "3,8,8", "num-classes": 4}
    started_run(tmp_path, **shaped)
    _, cont = DeployRecorder.reopen(plan_for(tmp_path, SECOND, resume=True))
    assert cont.plan.input_shape == (3, 8, 8) and cont.plan.num_classes == 4


BROKEN = {  # file -> what an operator (or a bad disk) left in it
    "summary.json": ["{not json", "[1, 2]"],
    "deployment.json": ['{"run_id": "flower-11", "flower_runs": ["x"]}',
                        '{"run_id": "flower-11", "flower_runs": 5}',
                        '{"run_id": "myrun", "flower_runs": [11]}', "{",
                        '{"run_id": "flower-11", "flower_runs": [11], "input_shape": "18"}',
                        '{"run_id": "flower-11", "flower_runs": [11], "num_classes": 0}',
                        '{"run_id": "flower-11", "flower_runs": [11], '
                        '"input_shape": [1099511627776, 1, 1]}'],
    "checkpoint/state.json": ["{", '{"round": 1}', '{"round": Infinity, "keys": []}',
                              '{"round": -3, "keys": []}'],
    "checkpoint/global.npz": ["", "PK\x03\x04 not a zip"],
    "metrics.jsonl": ["{bad\n", "[" * 100_000],
}


@pytest.mark.parametrize("case, message", [
    ("finished", "holds a finished run"),
    ("no-round", "no completed round"),
    ("he", "an HE deployment run cannot be resumed"),
    ("not-deployed", "no readable deployment.json"),
    ("missing", "no readable deployment.json"),
    ("no-global", "cannot be read"),
    ("other-model", "its checkpoint is not the run's model"),
    *[(f"{name}:{i}", "cannot resume") for name, texts in BROKEN.items()
      for i in range(len(texts))],
])
def test_what_cannot_be_resumed_is_one_line(tmp_path, case, message):
    if case != "missing":
        run_dir, _ = started_run(tmp_path, rounds_done=0 if case == "no-round" else 1)
    if case == "finished":
        (run_dir / "summary.json").write_text(json.dumps({"finished": True}))
    if case == "he":
        config = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps(config | {"secure_agg": "he"}))
    if case == "not-deployed":
        (run_dir / "deployment.json").unlink()
    if case == "no-global":
        (run_dir / "checkpoint" / "global.npz").unlink()
    if case == "other-model":
        config = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps(config | {"model": "cnn"}))
    if ":" in case:
        name, i = case.split(":")
        (run_dir / name).write_text(BROKEN[name][int(i)])
    with pytest.raises(ConfigError, match=message) as err:
        DeployRecorder.reopen(plan_for(tmp_path, SECOND, resume=True))
    assert "\n" not in str(err.value)
    if case != "missing":  # nothing was recorded, and the folder is not left locked
        try:
            runs = json.loads((run_dir / "deployment.json").read_text())["flower_runs"]
        except (OSError, ValueError, KeyError):
            runs = []
        assert not isinstance(runs, list) or SECOND not in runs
        with pytest.raises(ConfigError, match="already holds a run"):
            DeployRecorder.create(plan_for(tmp_path, 99))


def test_a_stopped_run_can_be_resumed_again(tmp_path):
    run_dir, _ = started_run(tmp_path)
    (run_dir / "summary.json").write_text(json.dumps({"finished": False}))
    DeployRecorder.reopen(plan_for(tmp_path, SECOND, resume=True))[0].close()
    _, cont = DeployRecorder.reopen(plan_for(tmp_path, 13, resume=True))
    assert cont.run_id == f"flower-{FIRST}"
    assert json.loads((run_dir / "deployment.json").read_text())["flower_runs"] == [
        FIRST, SECOND, 13]


@pytest.mark.parametrize("args, message", [
    (["--resume"], "give its --run-name"),
    (["--resume", "--run-name", "r1", "--rounds", "4", "--dp"],
     "drop --rounds, --dp"),
])
def test_submit_resume_refuses_what_it_would_ignore(tmp_path, args, message):
    done = subprocess.run(fedsim_cmd("deploy", "submit", "--superlink", "127.0.0.1:1",
                                     "--ca", str(tmp_path / "ca.crt"), *args),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_submit_resume_takes_the_runs_folder_it_lives_in():
    from fedsim.cli.deploy import _check_resume
    from fedsim.deploy.flwr_cli import DeployError

    _check_resume({"run_name": "r1", "resume": True, "server_out": "/srv/runs"}, None)
    with pytest.raises(DeployError, match=r"drop --rounds$"):
        _check_resume({"run_name": "r1", "resume": True, "server_out": "/srv/runs",
                       "rounds": 4}, None)
