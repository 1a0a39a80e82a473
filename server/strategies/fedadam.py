"""FedAdam (Reddi et al. 2021): a server-side Adam step on FedAvg's average.

Flower's FedAdam over fedsim's streaming FedAvg sum (see `server_opt`); its options
and defaults are Flower's (`--server-lr` is Flower's `eta`).
"""

from flwr.serverapp.strategy import FedAdam

from fedsim.server.strategies import server_opt

STRATEGY = server_opt.fedopt(
    FedAdam, module=__name__, name="fedadam",
    help="FedAdam (Reddi et al. 2021): a server-side Adam step on FedAvg's average "
         "(Flower's FedAdam).",
    options=(server_opt.server_lr("fedadam", 0.1), *server_opt.betas_and_tau("fedadam")))
FedsimFedAdam = STRATEGY.build  # importable by its name (pickle, logs)
