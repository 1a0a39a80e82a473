"""Which clients are in the federation: a handshake maps client ids to node ids.

Flower gives nodes random ids; fedsim samples and orders by the stable client id
each node reports, so the same seed samples the same clients on every run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim import protocol
from fedsim.errors import RunAborted

log = logging.getLogger("fedsim.server")


@dataclass
class Federation:
    """client id -> node id, plus seeded sampling over the client ids."""

    nodes: dict[int, int]
    seed: int

    def client_ids(self) -> list[int]:
        """All known client ids, sorted."""
        return sorted(self.nodes)

    def sample(self, server_round: int, fraction: float, *, stream: int,
               eligible: list[int] | None = None) -> list[int]:
        """A seeded, sorted sample of `fraction` of the eligible clients (>= 1)."""
        pool = self.client_ids() if eligible is None else sorted(eligible)
        if not pool:
            return []
        k = min(len(pool), max(1, int(round(fraction * len(self.nodes)))))
        rng = np.random.default_rng([self.seed, server_round, stream])
        return sorted(int(c) for c in rng.choice(pool, size=k, replace=False))


def _wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        node_ids = list(grid.get_node_ids())
        if len(node_ids) >= expected or time.monotonic() > deadline:
            return node_ids
        time.sleep(0.1)


def discover(grid: Grid, *, expected: int, seed: int, timeout: float) -> Federation:
    """Ask every connected node for its client id (one query message each)."""
    node_ids = _wait_for_nodes(grid, expected, timeout)
    if not node_ids:
        raise RunAborted(f"no client connected within {timeout:.0f}s")
    messages = [
        Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    nodes: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        src = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %s failed the handshake: %s", src, reply.error.reason)
            continue
        try:
            cid = int(reply.content[protocol.METRICS][protocol.CLIENT_ID])
        except (KeyError, TypeError, ValueError):
            log.warning("node %s sent a malformed handshake; ignored", src)
            continue
        if cid in nodes:
            log.warning("client id %s claimed by two nodes; keeping the first", cid)
            continue
        nodes[cid] = src
    if not nodes:
        raise RunAborted("no client answered the handshake")
    return Federation(nodes=nodes, seed=seed)
