"""`fedsim-superlink`: Flower's `flower-superlink`, waiting longer for its SQLite lock.

Flower's SQL state sets `PRAGMA busy_timeout = 5000`: a write that waits more than
5 s for the database lock fails with "database is locked" (HTTP 500). On a host
short of CPU (a 2-core edge server with HE ciphertexts of megabytes in flight) a
SuperNode's push of its reply hits that, does not retry, and the reply is lost: its
round then waits out the round timeout. This entry point runs Flower's own
SuperLink with a longer lock wait (BUSY_TIMEOUT_MS) and changes nothing else.
"""

from __future__ import annotations

import sys

BUSY_TIMEOUT_MS = 120_000


def wait_longer_for_locks(busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> tuple:
    """Set the busy timeout Flower's SQL state gives each new connection."""
    from flwr.supercore import sql_mixin

    pragmas = [(k, v) for k, v in sql_mixin.SQLITE_PRAGMAS if k != "busy_timeout"]
    sql_mixin.SQLITE_PRAGMAS = (("busy_timeout", str(busy_timeout_ms)), *pragmas)
    return sql_mixin.SQLITE_PRAGMAS


def main() -> None:
    """`flower-superlink` with the longer lock wait; same arguments."""
    wait_longer_for_locks()
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "fedsim-superlink"
    sys.exit(flower_superlink())


if __name__ == "__main__":
    main()
