"""FedYogi (Reddi et al. 2021): a server-side Yogi step on FedAvg's average.

Yogi is Adam with an additive, sign-controlled second-moment update. Flower's
FedYogi over fedsim's streaming FedAvg sum (see `server_opt`); its options and
defaults are Flower's (`--server-lr` 0.01, Flower's `eta`).
"""

from flwr.serverapp.strategy import FedYogi

from fedsim.server.strategies import server_opt

STRATEGY = server_opt.fedopt(
    FedYogi, module=__name__, name="fedyogi",
    help="FedYogi (Reddi et al. 2021): a server-side Yogi step on FedAvg's average "
         "(Flower's FedYogi).",
    options=(server_opt.server_lr("fedyogi", 0.01), *server_opt.betas_and_tau("fedyogi")))
FedsimFedYogi = STRATEGY.build  # importable by its name (pickle, logs)
