"""A DP client's noise and delta from the run's DP settings: pure, no Flower types.

Both the DP step (client/dp_step.py) and the site policy (client/policy.py) ask
these questions; keeping them here keeps those two from importing each other.
"""

from __future__ import annotations

import functools

from fedsim.errors import FedsimError
from fedsim.privacy.accounting import (
    STEPS_MAX,
    calibrate_noise,
    default_delta,
    participation_cap,
    sample_rate,
    steps_per_participation,
)
from fedsim.settings import DPSettings


def client_delta(dp: DPSettings, n: int) -> float:
    """The run's delta, or the default below 1/n for this client's data size."""
    return dp.delta if dp.delta is not None else default_delta(n)



def noise_for(dp: DPSettings, *, n: int, batch_size: int, local_epochs: int,
              rounds: int) -> float:
    """The noise multiplier: given, or calibrated for the worst case.

    The worst case is a client that trains in as many rounds as the server lets it
    (`participation_cap`: every round, or --max-participations): calibrated for
    that, no client's epsilon passes the target however sampling falls.
    """
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    if dp.target_epsilon is None:
        raise FedsimError("the run gives neither a noise multiplier nor a target "
                          "epsilon; this site does not train without one")
    steps = steps_per_participation(n, batch_size, local_epochs)
    total = steps * participation_cap(rounds, dp.max_participations)
    if total > STEPS_MAX:
        raise FedsimError(f"the run asks to calibrate noise for {total:,} DP steps; "
                          f"this site accounts at most {STEPS_MAX:,}")
    return _calibrated(dp.target_epsilon, client_delta(dp, n),
                       sample_rate(n, batch_size), total, dp.accountant)


@functools.lru_cache(maxsize=256)
def _calibrated(target: float, delta: float, rate: float, steps: int, accountant: str
                ) -> float:
    """Calibration is a pure (and slow) search: one per worker and setting."""
    return calibrate_noise(target_epsilon=target, delta=delta, sample_rate=rate,
                           steps=steps, accountant=accountant)
