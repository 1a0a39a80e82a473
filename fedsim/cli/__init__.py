"""The `fedsim` command line: one module per command; no training or crypto here."""

import time

# A run's wall time counts from here (see simulations.rundir.RunClock): before data
# preparation, Ray start and the handshake; only the interpreter's start comes before.
COMMAND_STARTED = time.monotonic()
