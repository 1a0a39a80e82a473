"""Message keys and payload helpers shared by the ServerApp and the ClientApp."""

import numpy as np
from flwr.app import Array, ArrayRecord

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# ConfigRecord keys sent by the server
ROUND = "server-round"
SETTINGS = "fedsim-settings"  # JSON of fedsim.settings.ClientSettings (its encode)
DATA_DIR = "data-dir"
SIM_PRIVACY_DIR = "privacy-dir"  # simulation only: where simulated clients keep their
#                                  own privacy ledgers (a real site: its node config)

# What a site accepts in the settings a server sends: a larger value could only
# exhaust its memory or time, so it is refused (`fedsim run` and `deploy submit`
# refuse the same, so an honest run never meets these).
SETTING_LIMITS = {"local_epochs": 1000, "batch_size": 1 << 20, "rounds": 100_000}
SEED_LIMIT = 2**63  # seeds are in [0, 2^63): numpy's and torch's range
MAX_INPUT = 3 * 1024 * 1024  # values per example (a 1024^2 RGB image)
MAX_TEXT_LEN = 4096  # tokens per example of a text model (attention is L x L)
MAX_PARAMETERS = 64_000_000  # of the model a run trains (256 MB in float32)
MAX_CLASSES = 100_000
MAX_EXAMPLES = 10_000_000  # a reply's example count (its FedAvg weight), at most
VOCAB_RANGE = (3, 1 << 22)  # 0 padding, 1 unknown, then at least one word id

# MetricRecord keys sent back by clients
NUM_EXAMPLES = "num-examples"
CLIENT_ID = "client-id"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACC = "eval-acc"


def flower_run_key(flower_run_id: int) -> str:
    """A deployed run's name in ledgers and HE tags, from Flower's run id.

    Every SuperNode learns that id from its own SuperLink connection.
    """
    return f"flower-{flower_run_id}"


def is_flower_run_key(text: str) -> bool:
    """True if `text` is a name `flower_run_key` gives (flower-<decimal run id>)."""
    prefix, _, number = text.partition("-")
    if prefix != "flower" or not (number.isascii() and number.isdigit()):
        return False
    return number == str(int(number)) and int(number) < 2**64  # one spelling per run


# Differential privacy: MetricRecord keys of a DP client's reply
DP_NOISE = "dp-noise-multiplier"
DP_SAMPLE_RATE = "dp-sample-rate"
DP_STEPS = "dp-steps"
DP_DELTA = "dp-delta"
DP_EPSILON = "dp-epsilon"  # the client's own view after this round
DP_EXHAUSTED = "dp-budget-exhausted"  # 1: refused to train, budget would be exceeded
DP_RELEASE = "dp-release"  # the client's random id for this release (its ledger's too)
DP_ROUND = "dp-round"  # the round the client trained for (labels a late reply)

# Homomorphic encryption: encrypted payloads travel as uint8 arrays in an ArrayRecord
HE_CONFIG = "he"  # ConfigRecord in replies: the key fingerprint used
HE_FINGERPRINT = "fingerprint"
HE_TOTAL_WEIGHT = "he-total-weight"  # float64 array [sum of weights] beside a sum
HE_SUM_ROUND = "he-sum-round"  # int64 array [round whose contributions a sum adds]
HE_SUM_BASIS = "he-sum-basis"  # uint8 array: SHA-256 of the global they trained on
HE_ROUND = "round"  # ConfigRecord in replies: the round a contribution is tagged for
HE_BASIS = "basis"  # ConfigRecord in replies: hex SHA-256 of the global it trained on
HE_PREFIX = "ct-"


def ciphertext_key(index: int) -> str:
    """ArrayRecord key of the index-th ciphertext."""
    return f"{HE_PREFIX}{index:05d}"


def encrypted_record(blobs: list[bytes], total_weight: float | None, *,
                     sum_round: int | None = None, basis: bytes | None = None
                     ) -> ArrayRecord:
    """Ciphertexts (and, for a sum, its total weight, round and basis) as an ArrayRecord."""
    record = ArrayRecord()
    for i, blob in enumerate(blobs):
        record[ciphertext_key(i)] = Array(np.frombuffer(blob, dtype=np.uint8))
    if total_weight is not None:
        record[HE_TOTAL_WEIGHT] = Array(np.asarray([total_weight], dtype=np.float64))
    if sum_round is not None:
        record[HE_SUM_ROUND] = Array(np.asarray([sum_round], dtype=np.int64))
    if basis is not None:
        record[HE_SUM_BASIS] = Array(np.frombuffer(basis, dtype=np.uint8).copy())
    return record


def sum_metadata(record: ArrayRecord) -> tuple[float, int, bytes]:
    """(total weight, round, basis) of an encrypted sum; KeyError/ValueError if absent."""
    total = float(record[HE_TOTAL_WEIGHT].numpy()[0])
    sum_round = int(record[HE_SUM_ROUND].numpy()[0])
    return total, sum_round, record[HE_SUM_BASIS].numpy().tobytes()


def ciphertext_blobs(record: ArrayRecord) -> list[bytes]:
    """The ciphertext bytes of a record, in index order."""
    keys = sorted(k for k in record.keys() if k.startswith(HE_PREFIX))
    return [record[k].numpy().tobytes() for k in keys]


def is_encrypted(record: ArrayRecord) -> bool:
    """True when a record carries ciphertexts rather than model layers."""
    return any(k.startswith(HE_PREFIX) for k in record.keys())


DP_HISTORY = "dp-history"  # ConfigRecord: JSON list of this client's recorded steps


# Error codes a client puts on an error reply (Flower's Error.code)
POLICY_REFUSED = 100  # a site's policy refused the run before any training
SITE_ERROR = 101  # a site could not produce a reply (its data, its keys)
GLOBAL_REFUSED = 102  # a site refused the global it was sent (failed HE verification)
