"""FedAdagrad (Reddi et al. 2021): a server-side Adagrad step on FedAvg's average.

Flower's FedAdagrad over fedsim's streaming FedAvg sum (see `server_opt`); its
options and defaults are Flower's (`--server-lr` is Flower's `eta`).
"""

from flwr.serverapp.strategy import FedAdagrad

from fedsim.server.strategies import server_opt

STRATEGY = server_opt.fedopt(
    FedAdagrad, module=__name__, name="fedadagrad",
    help="FedAdagrad (Reddi et al. 2021): a server-side Adagrad step on FedAvg's "
         "average (Flower's FedAdagrad).",
    options=(server_opt.server_lr("fedadagrad", 0.1), server_opt.tau("fedadagrad")))
FedsimFedAdagrad = STRATEGY.build  # importable by its name (pickle, logs)
