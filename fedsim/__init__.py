"""fedsim: privacy-preserving federated learning on Flower, Ray, Opacus and TenSEAL.

The modules directly in this package (`errors`, `config`, `protocol`) are the shared
foundation every layer may import; the command line lives in `fedsim.cli` and is
imported by nothing.
"""

__version__ = "0.1.0"

import os as _os

# Flower posts usage telemetry (platform, run events) to telemetry.flower.ai unless
# told not to. fedsim does not phone home; offline, the attempt also held every
# `fedsim run` exit for 7-10 s. FLWR_TELEMETRY_ENABLED=1 turns it back on.
_os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
