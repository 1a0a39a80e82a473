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
from fedsim.deploy.rundir import Continuation, DeployRecorder
from fedsim.errors import ConfigError
from fedsim.privacy.ledger import RUN_LEDGER
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


def server_plan(plan: DeployPlan, run_dir: Path,
                continuation: Continuation | None = None) -> ServerPlan:
    """Fedsim's ServerPlan for a deployment: no data on the server, no central eval.

    A continuation keeps its run's first id (what each SuperNode accounts it
    under) and starts after its checkpoint's round.
    """
    cfg = plan.config
    checkpoint = continuation.checkpoint if continuation else None
    return ServerPlan(
        config=cfg, model=model_spec(plan), data_dir=None,
        ledger_path=str(run_dir / RUN_LEDGER) if cfg.dp else None,
        run_id=(continuation.run_id if continuation
                else flower_run_key(plan.flower_run_id)),
        he=he_plan(plan), central_eval=False,
        handshake_timeout=plan.handshake_timeout,
        resume_round=checkpoint.round if checkpoint else 0,
        resume_arrays=checkpoint.arrays if checkpoint else None,
    )


def run_deployment(grid: Grid, context: Context) -> Path:
    """Check the run config, make (or reopen) the run folder, run, write the summary."""
    plan = deploy_plan(context.run_config, run_id=context.run_id)
    recorder, splan = _open_run(plan)
    try:
        run_server(grid, splan, recorder)
    finally:
        try:
            recorder.write_summary(splan)
        finally:
            recorder.close()
    return recorder.run_dir


def _open_run(plan: DeployPlan) -> tuple[DeployRecorder, ServerPlan]:
    """The run folder (locked: one ServerApp at a time) and the ServerPlan for it."""
    continuation = None
    if plan.resume:
        recorder, continuation = DeployRecorder.reopen(plan)
        plan = continuation.plan
    else:
        recorder = DeployRecorder.create(plan)
    try:
        splan = server_plan(plan, recorder.run_dir, continuation)
        if continuation is None:
            recorder.write_config(splan)
            log.warning("fedsim: run folder %s", recorder.run_dir)
        else:
            log.warning("fedsim: resuming run folder %s after round %d",
                        recorder.run_dir, splan.resume_round)
    except BaseException:
        recorder.close()
        raise
    return recorder, splan


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp entry point (Flower calls it in the SuperLink's ServerApp process)."""
    run_deployment(grid, context)
