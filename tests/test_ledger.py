import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fedsim.privacy.ledger import RUN_LEDGER, LedgerError, LedgerRecord, PrivacyLedger


def record(round_=1, client_id=0, epsilon=1.0, released=True, **changes):
    values = dict(
        round=round_, client_id=client_id, noise_multiplier=1.1, sample_rate=0.1,
        steps=50, delta=1e-5, accountant="rdp", epsilon=epsilon, budget=8.0,
        released=released,
    )
    values.update(changes)
    return LedgerRecord(**values)


def test_record_round_trips_through_json():
    original = record(budget=None, released=False)
    text = json.dumps(original.to_dict())
    assert LedgerRecord.from_dict(json.loads(text)) == original


def test_later_fields_round_trip_and_older_ledgers_still_read():
    new = record(run="r1", release=2**53 - 1, outcome="refused", site_epsilon=1.5,
                 reason="over budget")
    assert LedgerRecord.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    assert new.spends and not new.aggregated and not new.exhaustion_marker
    old = record().to_dict()
    for key in ("run", "release", "outcome", "site_epsilon", "reason"):
        del old[key]
    read = LedgerRecord.from_dict(old)
    assert read.outcome is None and read.aggregated  # an old released record was used
    marker = LedgerRecord.from_dict(record(steps=0, released=False).to_dict())
    assert marker.exhaustion_marker and not marker.spends
    with pytest.raises(LedgerError, match="'release' must be an integer or null"):
        LedgerRecord.from_dict({**new.to_dict(), "release": "x"})


def test_a_lenient_read_takes_what_a_report_tolerates_and_no_more():
    # Prepare
    data = {**record().to_dict(), "round": 3.0, "release": 7.0, "outcome": 5,
            "reason": ["x"]}
    del data["released"]

    # Execute
    read = LedgerRecord.from_dict(data, lenient=True)

    # Assert
    assert (read.round, read.release, read.outcome, read.reason) == (3, 7, None, None)
    assert read.released is True
    with pytest.raises(LedgerError):
        LedgerRecord.from_dict(data)
    with pytest.raises(LedgerError, match="'steps' must be an integer"):
        LedgerRecord.from_dict({**data, "steps": 1.5}, lenient=True)


def test_record_from_dict_names_every_bad_field():
    data = record().to_dict()
    del data["steps"]
    data["released"] = "yes"
    data["round"] = 1.5
    with pytest.raises(LedgerError) as info:
        LedgerRecord.from_dict(data)
    message = str(info.value)
    assert "'steps' is missing" in message
    assert "'released' must be true or false" in message
    assert "'round' must be an integer" in message


def test_empty_or_missing_ledger(tmp_path):
    ledger = PrivacyLedger(tmp_path / RUN_LEDGER)
    assert ledger.records() == []
    assert ledger.history(3) == []


def test_appended_records_are_read_back_per_client(tmp_path):
    # Prepare
    ledger = PrivacyLedger(tmp_path / RUN_LEDGER)
    first = [record(1, 0, 0.5), record(1, 1, 0.7)]
    # Execute
    ledger.extend(first)
    ledger.append(record(2, 0, 0.9, released=False, noise_multiplier=2.0, steps=10))
    # Assert
    reread = PrivacyLedger(ledger.path)
    assert reread.records() == [*first, record(2, 0, 0.9, released=False,
                                                noise_multiplier=2.0, steps=10)]
    assert reread.history(0) == [(1.1, 0.1, 50)]  # only released updates spend
    assert reread.torn_lines == 0


def test_torn_final_line_is_ignored_then_cut_off(tmp_path):
    # Prepare: a crash in the middle of writing the third line.
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.extend([record(1), record(2)])
    full_line = json.dumps(record(3).to_dict()).encode()
    with open(ledger.path, "ab") as fh:
        fh.write(full_line[:25])
    # Execute / Assert: readers skip it and say so.
    assert [r.round for r in ledger.records()] == [1, 2]
    assert ledger.torn_lines == 1
    # Execute / Assert: the next append removes the torn bytes first.
    ledger.append(record(4))
    assert [r.round for r in ledger.records()] == [1, 2, 4]
    assert ledger.torn_lines == 0


def test_complete_json_without_newline_is_still_torn(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.append(record(1))
    with open(ledger.path, "ab") as fh:
        fh.write(json.dumps(record(2).to_dict()).encode())
    assert [r.round for r in ledger.records()] == [1]
    assert ledger.torn_lines == 1


def test_damaged_middle_line_is_an_error(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.append(record(1))
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"round": 2, "garbage\n')
    ledger.append(record(3))
    with pytest.raises(LedgerError, match="line 2 is damaged"):
        ledger.records()


def _fd_target(fd):
    return os.readlink(f"/proc/self/fd/{fd}")


def test_appends_are_fsynced_file_and_new_folders(tmp_path, monkeypatch):
    # Prepare: record what every fsync call points at.
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(_fd_target(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ledger = PrivacyLedger(tmp_path / "run" / RUN_LEDGER)
    # Execute: the first append creates run/, run/privacy/ and the file.
    ledger.append(record(1))
    first = list(synced)
    synced.clear()
    ledger.append(record(2))
    # Assert
    assert str(ledger.path) in first
    assert str(ledger.path.parent) in first  # the new file's directory entry
    assert str(tmp_path / "run") in first  # the new privacy/ folder's entry
    assert str(tmp_path) in first  # the new run/ folder's entry
    assert synced == [str(ledger.path)]


CHILD = textwrap.dedent(
    """
    import sys
    from fedsim.privacy.ledger import LedgerRecord, PrivacyLedger

    ledger = PrivacyLedger(sys.argv[1])
    for i in range(100000):
        ledger.append(LedgerRecord(
            round=i, client_id=i % 7, noise_multiplier=1.0, sample_rate=0.1,
            steps=10, delta=1e-5, accountant="rdp", epsilon=0.01 * i, budget=None,
            released=True,
        ))
        print(i, flush=True)
    """
)


@pytest.mark.parametrize("kill_after", [3, 30, 120])
def test_sigkill_mid_run_keeps_every_acknowledged_record(tmp_path, kill_after):
    # Prepare: a writer that reports each append once it has returned.
    path = tmp_path / "privacy" / "ledger.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = -1
    # Execute: kill it without warning somewhere in the middle of its appends.
    deadline = time.monotonic() + 20
    while acknowledged < kill_after and time.monotonic() < deadline:
        acknowledged = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    # Assert: every acknowledged record is there, in order, and the file reads.
    rounds = [r.round for r in PrivacyLedger(path).records()]
    assert acknowledged >= kill_after
    assert rounds[: acknowledged + 1] == list(range(acknowledged + 1))
    assert rounds == list(range(len(rounds)))

