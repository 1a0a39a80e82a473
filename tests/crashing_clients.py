"""ClientApps that fail at the process level, for fault-injection tests."""

import os
import time

from fedsim.client import app as real
from tests.client_apps import client_app

SLOW_CLIENT, DYING_CLIENT = 0, 1
SLEEP_S = 25.0  # past the test's 15 s round timeout, with margin for a slow machine


def train(msg, context):
    """In round 1 client 0 sleeps past the round timeout, client 1 kills its worker."""
    cid = real.client_id(context)
    first_round = int(msg.content["config"]["server-round"]) == 1
    if first_round and cid == SLOW_CLIENT:
        time.sleep(SLEEP_S)
    if first_round and cid == DYING_CLIENT:
        os._exit(1)
    return real.train(msg, context)


app = client_app(train=train)
