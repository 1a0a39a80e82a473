"""The durable privacy ledgers: one JSON line per release (or refusal) of a client.

Two kinds of ledger share this format and code:

- The server's, ``privacy/ledger.jsonl`` in the run folder: the run's record. One
  record for every training reply the server received, whatever became of it
  (`outcome`: ``aggregated``, ``rejected``, ``refused`` over budget, ``late``
  after its round closed, or ``exhausted`` when the client refused to train), with
  the cumulative epsilon the server computes from every release it has seen of
  that client. An update's record is on disk *before* the update enters the sum.
- A site's own (`client/dp_step.py`): what that client released, written by the
  client before its reply leaves it, across runs (`run`), with the random id of
  each release (`release`) that the server's records repeat. In deployment it
  lives in the site's own folder; in simulation one file per client under the run
  folder's ``privacy/clients/``.

`append` returns only once the line is on disk (file flushed and fsynced, and on
creation the directory too). ``released: true`` means a noised update left the
client. A client that refuses a round because it would pass its epsilon budget
leaves a zero-step marker (``steps: 0``, ``released: false``, outcome
``exhausted``, its unchanged epsilon): nothing was spent.

Only newline-terminated lines count. A crash mid-append can leave a torn final
line: readers ignore it (and count it in `torn_lines`), and the next append cuts it
off first. A damaged line anywhere else is an error: the ledger is then not to be
trusted. Appends hold an exclusive lock on the file (a site's ledger is written by
every run it takes part in, possibly at once), so one writer appends at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError
from fedsim.privacy.accounting import Step
from fedsim.privacy.files import lock_file

RUN_LEDGER = Path("privacy") / "ledger.jsonl"
"""Where in a run folder the server keeps its ledger."""
SITE_LEDGERS = Path("privacy") / "clients"
"""Simulation: where in a run folder each client keeps its own (client-<id>.jsonl)."""


class LedgerError(FedsimError):
    """The privacy ledger is damaged and cannot be trusted."""

    exit_code = 2


_NUMBER = (int, float)
_FIELD_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "round": ((int,), "an integer"),
    "client_id": ((int,), "an integer"),
    "noise_multiplier": (_NUMBER, "a number"),
    "sample_rate": (_NUMBER, "a number"),
    "steps": ((int,), "an integer"),
    "delta": (_NUMBER, "a number"),
    "accountant": ((str,), "a string"),
    "epsilon": (_NUMBER, "a number"),
    "budget": ((*_NUMBER, type(None)), "a number or null"),
    "released": ((bool,), "true or false"),
}
_OPTIONAL_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "run": ((str, type(None)), "a string or null"),
    "release": ((int, type(None)), "an integer or null"),
    "outcome": ((str, type(None)), "a string or null"),
    "site_epsilon": ((*_NUMBER, type(None)), "a number or null"),
    "reason": ((str, type(None)), "a string or null"),
    "flower_run": ((str, type(None)), "a string or null"),
}
"""Fields added later: absent in older ledgers (read as null)."""
_FLOATS = ("noise_multiplier", "sample_rate", "delta", "epsilon", "budget", "site_epsilon")

AGGREGATED = "aggregated"  # server: the update entered the round's sum
REJECTED = "rejected"  # server: a bad reply (payload, metrics), not used
REFUSED = "refused"  # server: would pass --epsilon-budget by the server's count
LATE = "late"  # server: arrived after its round had closed, not used
EXHAUSTED = "exhausted"  # both: the client refused to train (nothing spent)
RELEASED = "released"  # site: trained, and the reply left the client
OUTCOMES = (AGGREGATED, REJECTED, REFUSED, LATE, EXHAUSTED, RELEASED)


def _field_problem(name: str, data: dict[str, Any]) -> str | None:
    kinds, expected = _FIELD_KINDS.get(name) or _OPTIONAL_KINDS[name]
    if name not in data:
        return None if name in _OPTIONAL_KINDS else f"field '{name}' is missing"
    value = data[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        return f"field '{name}' must be {expected}, got {value!r}"
    return None


def _whole(value: Any) -> bool:
    """A float such as 33.0: a whole number in a type the ledger does not write."""
    return isinstance(value, float) and value.is_integer()


def _leniently(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with what a report tolerates made right (see `LedgerRecord.from_dict`)."""
    fixed = {**data, "released": bool(data.get("released", True))}
    for name, (kinds, _) in (_FIELD_KINDS | _OPTIONAL_KINDS).items():
        if int in kinds and float not in kinds and _whole(fixed.get(name)):
            fixed[name] = int(fixed[name])
    for name in _OPTIONAL_KINDS:
        if _field_problem(name, fixed):
            fixed[name] = None
    return fixed


class ReleaseOutcome:
    """What a ledger line says happened; for any record with outcome, steps, released."""

    outcome: str | None
    steps: int
    released: bool

    @property
    def exhaustion_marker(self) -> bool:
        """The client refused to train (its budget): nothing released, nothing spent."""
        if self.outcome is not None:
            return self.outcome == EXHAUSTED
        return self.steps == 0 and not self.released

    @property
    def spends(self) -> bool:
        """A noised update left the client: it counts in the client's epsilon."""
        return self.released and self.steps > 0

    @property
    def aggregated(self) -> bool:
        """The update entered the sum (older ledgers: every released update did)."""
        return self.outcome == AGGREGATED if self.outcome is not None else self.released


@dataclass(frozen=True, kw_only=True)
class LedgerRecord(ReleaseOutcome):
    """One client participation: the DP-SGD it ran and the epsilon it reached."""

    round: int
    client_id: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon: float
    """Cumulative epsilon of this client after this participation."""
    budget: float | None
    released: bool
    run: str | None = None
    """The run (site ledgers hold every run the site took part in)."""
    release: int | None = None
    """The client's random id for this release; the server's record repeats it."""
    outcome: str | None = None
    """What became of the reply (one of OUTCOMES); null in older ledgers."""
    site_epsilon: float | None = None
    """Server records: the epsilon the client reported from its own ledger."""
    reason: str | None = None
    """Why a reply was rejected or refused (server records)."""
    flower_run: str | None = None
    """Deployed site records: the Flower run the participation came in (a resumed
    run's later Flower runs record under `run`, the run's first id)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, one key per field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, lenient: bool = False) -> LedgerRecord:
        """Inverse of `to_dict`; a missing or mistyped field raises LedgerError.

        `lenient` is how a report reads a folder that may be old or edited: a whole
        float (33.0) stands for an integer, a missing `released` for true, and a
        mistyped later field (run, release, outcome, ...) for null. The fields every
        ledger has must still be there, with their types.
        """
        if not isinstance(data, dict):
            raise LedgerError(f"a record must be a JSON object, got {data!r}")
        if lenient:
            data = _leniently(data)
        names = (*_FIELD_KINDS, *_OPTIONAL_KINDS)
        problems = [p for name in names if (p := _field_problem(name, data))]
        if problems:
            raise LedgerError("; ".join(problems))
        values = {f.name: data.get(f.name) for f in fields(cls)}
        for name in _FLOATS:
            values[name] = None if values[name] is None else float(values[name])
        return cls(**values)

    @property
    def step(self) -> Step:
        """Return the participation as an accountant history entry."""
        return (self.noise_multiplier, self.sample_rate, self.steps)



def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    """Create the ledger's folder (durably) if it is missing."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    if not missing:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):  # each new folder's entry lives in its parent
        _fsync_dir(folder.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _cut_torn_tail(fd: int) -> None:
    """Drop bytes after the last newline (an append that never returned)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep = size
    while keep > 0:
        start = max(0, keep - 4096)
        chunk = os.pread(fd, keep - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        keep = start
    os.ftruncate(fd, keep)


class PrivacyLedger:
    """Append-only JSON-lines ledger of DP participations at `path`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.torn_lines = 0
        """Torn final lines the last read ignored (0 or 1)."""

    def append(self, record: LedgerRecord) -> None:
        """Write one record durably; returns once it is on disk."""
        self.extend([record])

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the ledger for a read-decide-append sequence, such as a budget check.

        Another process's `exclusive()` waits until this one ends, so two messages of
        one run handled at once cannot both pass a budget check on the same history.
        The lock is on a file beside the ledger (``<ledger>.lock``): `extend` locks
        the ledger file itself, and a second flock on it from this process would wait
        forever.
        """
        _make_parent(self.path)
        fd = lock_file(Path(f"{self.path}.lock"))
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def extend(self, records: list[LedgerRecord]) -> None:
        """Write several records durably in one fsync; returns once on disk."""
        payload = b"".join(
            json.dumps(r.to_dict(), sort_keys=True).encode() + b"\n" for r in records
        )
        if not payload:
            return
        _make_parent(self.path)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # Two runs at once are two ClientApp processes: unlocked, one's torn-tail
            # cut could see the other's append half-done and cut its records off.
            fcntl.flock(fd, fcntl.LOCK_EX)
            _cut_torn_tail(fd)
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        if created:
            _fsync_dir(self.path.parent)

    def records(self) -> list[LedgerRecord]:
        """Every complete record, oldest first; sets `torn_lines`."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.torn_lines = 0
            return []
        lines = data.split(b"\n")
        self.torn_lines = 1 if lines[-1] else 0
        return [self._parse(number, line) for number, line in enumerate(lines[:-1], 1)]

    def _parse(self, number: int, line: bytes) -> LedgerRecord:
        try:
            return LedgerRecord.from_dict(json.loads(line))
        except (ValueError, TypeError, AttributeError, LedgerError) as err:
            raise LedgerError(
                f"privacy ledger {self.path} line {number} is damaged ({err}); "
                "its epsilons cannot be trusted: restore the run folder from a copy"
            ) from err

    def history(self, client_id: int) -> list[Step]:
        """Return the client's accountant history: one entry per release it made."""
        return [r.step for r in self.records() if r.client_id == client_id and r.spends]
