"""Test ClientApps built from fedsim's own handlers, with some piece replaced."""

from collections.abc import Callable, Mapping

from flwr.clientapp import ClientApp

from fedsim.client import app as real
from fedsim.client.local_data import train_size
from fedsim.client.policy import make_site_guard


def client_app(*, train: Callable = real.train, mods: tuple = ()) -> ClientApp:
    """A ClientApp answering with fedsim's handshake and evaluation, and `train`."""
    app = ClientApp(mods=list(mods))
    app.query()(real.hello)
    app.train()(train)
    app.evaluate()(real.evaluate_local)
    return app


def site_config_mod(sites: Mapping[int, Mapping[str, str]]):
    """A mod giving simulated clients their own node config entries (e.g. `policy`).

    Flower's simulation engine gives every virtual SuperNode the same node config
    (its partition id only); this adds `sites[partition id]` before the guard runs,
    as a real SuperNode's `--node-config` would.
    """

    def add_site_config(msg, context, call_next):
        extra = sites.get(int(context.node_config["partition-id"]), {})
        context.node_config.update(extra)
        return call_next(msg, context)

    return add_site_config


def client_app_with_sites(sites: Mapping[int, Mapping[str, str]]) -> ClientApp:
    """Fedsim's ClientApp for a simulation whose clients have site node configs."""
    return client_app(mods=(site_config_mod(sites), make_site_guard(train_size)))
