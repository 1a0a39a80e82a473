"""The server's side of DP: participation cap, budget refusal, a record per reply.

DPFedAvg is driven directly with the replies a client would send (no Ray): each
case is a message the server can receive, and the ledger must say what it did.
"""

from __future__ import annotations

from flwr.app import ConfigRecord

from fedsim.privacy.ledger import PrivacyLedger
from fedsim.server.federation import Federation
from fedsim.server.strategies.dp_fedavg import DPFedAvg


def strategy(tmp_path, *, clients=3, **options) -> DPFedAvg:
    federation = Federation(nodes={c: 100 + c for c in range(clients)}, seed=1)
    settings = {"accountant": "rdp", "delta": None, "budget": None, **options}
    return DPFedAvg(ledger=PrivacyLedger(tmp_path / "ledger.jsonl"),
                    federation=federation, fraction=1.0, fraction_evaluate=1.0,
                    **settings)


def test_no_client_is_sampled_past_the_participation_cap(tmp_path):
    dp = strategy(tmp_path, clients=4, max_participations=2)
    counts = dict.fromkeys(range(4), 0)
    for server_round in range(1, 7):
        ids = dp.federation.sample(server_round, 0.75, stream=0,
                                   eligible=dp.eligible_clients(server_round))
        for cid in ids:
            dp.train_config_for(cid, ConfigRecord({}))
            counts[cid] += 1
    assert counts == dict.fromkeys(range(4), 2)  # 8 slots, then nobody is eligible
    assert dp.eligible_clients(7) == []
