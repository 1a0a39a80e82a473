"""Message keys shared by the ServerApp and the ClientApp (one place, both halves)."""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# ConfigRecord keys sent by the server
ROUND = "server-round"
SETTINGS = "fedsim-settings"  # JSON of client.settings.ClientSettings
DATA_DIR = "data-dir"

# MetricRecord keys sent back by clients
NUM_EXAMPLES = "num-examples"
CLIENT_ID = "client-id"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACC = "eval-acc"


def encode_settings(settings: dict) -> str:
    """Serialize the client-side training settings for a ConfigRecord."""
    import json

    return json.dumps(settings, sort_keys=True)


def decode_settings(text: str) -> dict:
    """Inverse of `encode_settings`."""
    import json

    return json.loads(text)
