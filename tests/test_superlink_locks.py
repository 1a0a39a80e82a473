"""fedsim-superlink: Flower's SQL state waits out a lock longer than Flower's 5 s."""

import sqlite3
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from fedsim.deploy.superlink import wait_longer_for_locks

HOLD_S = 6.5  # longer than Flower's own busy_timeout (5 s)


def _state(db):
    from flwr.supercore.object_store.sql_object_store import SqlObjectStore

    store = SqlObjectStore(str(db))
    store.initialize()
    return store._engine


def _write_while_locked(engine, db) -> float:
    """Hold the write lock from another connection for HOLD_S; write through `engine`."""
    locked = threading.Event()

    def hold():
        con = sqlite3.connect(db, timeout=0)
        con.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(HOLD_S)
        con.rollback()
        con.close()

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait()
    started = time.monotonic()
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            conn.execute(text("INSERT INTO probe VALUES (1)"))
        return time.monotonic() - started
    finally:
        holder.join()


def test_superlink_state_waits_out_a_lock_flower_gives_up_on(tmp_path, monkeypatch):
    from flwr.supercore import sql_mixin

    monkeypatch.setattr(sql_mixin, "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)
    flowers = _state(tmp_path / "flower.db")
    with pytest.raises(OperationalError, match="database is locked"):
        _write_while_locked(flowers, tmp_path / "flower.db")

    pragmas = wait_longer_for_locks(30_000)
    assert dict(pragmas)["busy_timeout"] == "30000"
    assert dict(pragmas)["journal_mode"] == "WAL"  # Flower's other settings are kept
    ours = _state(tmp_path / "ours.db")
    with ours.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    waited = _write_while_locked(ours, tmp_path / "ours.db")
    assert HOLD_S - 1 < waited < 30
