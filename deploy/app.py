"""The Flower App a real SuperLink runs: `flwr run` on deploy/ loads these two objects.

- `server_app`: builds fedsim's ServerPlan from Flower's run config (no server-side
  data: the sites hold theirs), records the run folder on the server, and runs the
  very `run_server` that simulations run.
- `client_app`: fedsim's ClientApp itself, unchanged; in a deployment it finds its
  data in the site's folder (node config `data-dir`) and enforces the site's policy
  (node config `policy`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.client.app import app as client_app
from fedsim.deploy.runconfig import DeployPlan, deploy_plan, model_spec
from fedsim.errors import ConfigError
from fedsim.protocol import flower_run_key
from fedsim.server.app import HEPlan, ServerPlan, run_server

log = logging.getLogger("fedsim.deploy")

__all__ = ["client_app", "server_app"]


def he_plan(plan: DeployPlan) -> HEPlan | None:
    """The server's HE view: the mounted server.ctx and its fingerprint."""
    if plan.config.secure_agg != "he":
        return None
    if plan.he_context is None:
        raise ConfigError("secure-agg is he but the run config has no he-context; "
                          "mount server.ctx on the server and set he-context=PATH")
    from fedsim.privacy.keys import SERVER_KIND, key_info

    info = key_info(plan.he_context)
    if info["kind"] != SERVER_KIND or info["secret_key"]:
        raise ConfigError(f"he-context '{plan.he_context}' is not a public server.ctx "
                          "(it holds a secret key or is no key file); mount server.ctx")
    return HEPlan(server_context_path=plan.he_context,
                  fingerprint=str(info["fingerprint"]),
                  client_key_path=plan.he_client_key)


def server_plan(plan: DeployPlan, run_dir: Path) -> ServerPlan:
    """Fedsim's ServerPlan for a deployment: no data on the server, no central eval."""
    cfg = plan.config
    return ServerPlan(
        config=cfg, model=model_spec(plan), data_dir=None,
        ledger_path=str(run_dir / "privacy" / "ledger.jsonl") if cfg.dp else None,
        run_id=flower_run_key(plan.flower_run_id),  # what each SuperNode calls this run
        he=he_plan(plan), central_eval=False,
        handshake_timeout=plan.handshake_timeout,
    )


def run_deployment(grid: Grid, context: Context) -> Path:
    """Check the run config, make the run folder, run the rounds, write the summary."""
    from fedsim.deploy.rundir import DeployRecorder

    plan = deploy_plan(context.run_config, run_id=context.run_id)
    recorder = DeployRecorder.create(plan)
    splan = server_plan(plan, recorder.run_dir)
    recorder.write_config(splan)
    log.warning("fedsim: run folder %s", recorder.run_dir)
    try:
        run_server(grid, splan, recorder)
    finally:
        recorder.write_summary(splan)
    return recorder.run_dir


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp entry point (Flower calls it in the SuperLink's ServerApp process)."""
    run_deployment(grid, context)
