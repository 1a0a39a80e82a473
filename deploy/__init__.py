"""Edge deployment: certificates, the Flower App, and the process commands.

- `pki`, `certcheck`: the CA, the SuperLink certificate, site keys; their checks.
- `commands`: the argv of every process (docker-compose.yml and the tests use them).
- `app`, `runconfig`, `rundir`: the Flower App a SuperLink runs (fedsim's ServerApp
  and ClientApp), Flower's run config mapped to fedsim's, the server's run folder.
- `control`, `flwr_cli`: the operator's side, through Flower's `flwr` CLI.
- `health`: the containers' health check.

Module names avoid the standard library's: `flwr run` puts this folder on sys.path
while it checks the app.
"""
