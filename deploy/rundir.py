"""The deployment's run folder on the server, in the layout a simulation writes.

config.json, metrics.jsonl, model.pt (or model_encrypted.npz under HE), summary.json
and privacy/ledger.jsonl (DP): the same files, written by the same RunRecorder, so
`fedsim report` reads both alike. There is no partitions.json: the sites' data never
reaches the server.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.deploy.runconfig import DeployPlan
from fedsim.errors import ConfigError
from fedsim.fedmodels.models import build_model, count_parameters
from fedsim.server.app import ServerPlan
from fedsim.simulations.rundir import RunRecorder, atomic_write_json


class DeployRecorder(RunRecorder):
    """A RunRecorder that also writes config.json and summary.json itself."""

    @classmethod
    def create(cls, plan: DeployPlan) -> DeployRecorder:
        """Make `out/<run name>`; an existing non-empty folder is refused."""
        run_dir = plan.out / plan.run_name
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ConfigError(f"run folder '{run_dir}' already holds a run; choose "
                              "another run-name")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the run folder '{run_dir}': "
                              f"{err.strerror}; mount a writable folder at "
                              f"'{plan.out}' or set out=PATH") from err
        return cls(run_dir)

    def write_config(self, plan: ServerPlan) -> None:
        """config.json: the resolved run config, its `out` the run folder itself."""
        values = plan.config.to_dict() | {"out": str(self.run_dir)}
        atomic_write_json(self.run_dir / "config.json", values)

    def write_summary(self, plan: ServerPlan) -> dict:
        """summary.json with the totals and what the run was."""
        cfg = plan.config
        extra = {"num_parameters": count_parameters(build_model(plan.model)),
                 "model": cfg.model, "dataset": cfg.dataset, "mode": "deployment"}
        if plan.he is not None:
            extra["he_fingerprint"] = plan.he.fingerprint
        summary = self.summary(extra)
        atomic_write_json(Path(self.run_dir) / "summary.json", summary)
        return summary
