"""Read a run folder tolerantly: every file may be missing, old or cut short.

Nothing here raises for a damaged file; each problem becomes one warning line
naming the file, and the report is made from what could be read. Only a path that
is not a run folder at all is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError
from fedsim.privacy.ledger import RUN_LEDGER, SITE_LEDGERS, LedgerError, LedgerRecord

HE_CONTEXT = Path("he") / "server.ctx"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "partitions.json")


class ReportError(FedsimError):
    """A report cannot be made at all (no run folder, nothing readable, bad flags)."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class HEInfo:
    """What the report says about homomorphic encryption."""

    on: bool
    params: str | None
    fingerprint: str | None
    fingerprint_source: str


@dataclass(frozen=True, kw_only=True)
class RunData:
    """Everything readable in one run folder, plus one warning line per problem."""

    run_dir: Path
    config: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]
    summary: dict[str, Any] | None
    partitions: dict[str, Any] | None
    ledger: tuple[LedgerRecord, ...]
    has_ledger: bool
    he: HEInfo
    warnings: tuple[str, ...]
    site_ledgers: dict[int, tuple[LedgerRecord, ...]] | None = None
    """Simulation: each client's own ledger, this run's records (None: not there)."""

    @property
    def finished(self) -> bool:
        """True only when summary.json says the run reached its end."""
        return bool(self.summary and self.summary.get("finished"))

    @property
    def client_count(self) -> int | None:
        """Clients in the federation: partitions.json, else the config."""
        listed = (self.partitions or {}).get("clients")
        if isinstance(listed, dict) and listed:
            return len(listed)
        count = self.config.get("clients")
        return count if isinstance(count, int) and count > 0 else None

    @property
    def dp_on(self) -> bool:
        """DP is on when the config says so or a ledger exists."""
        return bool(self.config.get("dp")) or self.has_ledger


def _read_json(path: Path, warnings: list[str], *,
               why: str | None = None) -> dict[str, Any] | None:
    """Read a JSON object, or warn and return None (`why`: what goes missing)."""
    if not path.is_file():
        if why:
            warnings.append(f"{path.name} is missing in {path.parent}: {why}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warnings.append(f"{path.name} in {path.parent} is unreadable ({err}); ignored")
        return None
    if not isinstance(data, dict):
        warnings.append(f"{path.name} in {path.parent} is not a JSON object; ignored")
        return None
    return data


def _jsonl_rows(path: Path, warnings: list[str]) -> list[dict[str, Any]] | None:
    """JSON objects, one a line; a cut-short last line is skipped with a warning."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        warnings.append(f"{path} is unreadable ({err}); ignored")
        return None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number == len(lines):
            warnings.append(f"{path}: skipped a truncated last line (line {number}); "
                            "the run was probably interrupted while writing it")
        else:
            warnings.append(f"{path}: skipped malformed line {number} "
                            "(the file is damaged, not just cut short)")
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ledger_record(row: dict[str, Any]) -> LedgerRecord | None:
    """Type one ledger row leniently; None when a field is missing or of the wrong type."""
    try:
        return LedgerRecord.from_dict(row, lenient=True)
    except LedgerError:
        return None


def _ledger(run_dir: Path, warnings: list[str]) -> tuple[list[LedgerRecord], bool]:
    """Read the DP ledger's valid records (file order); say if the file exists."""
    path = run_dir / RUN_LEDGER
    if not path.is_file():
        return [], False
    rows = _jsonl_rows(path, warnings) or []
    records = [r for r in map(_ledger_record, rows) if r is not None]
    if len(records) < len(rows):
        warnings.append(f"{path}: skipped {len(rows) - len(records)} record(s) "
                        "lacking a required field")
    return records, True


def _site_ledgers(run_dir: Path, run_id: Any, warnings: list[str]
                  ) -> dict[int, tuple[LedgerRecord, ...]] | None:
    """The clients' own ledgers of a simulation: this run's records, per client."""
    folder = run_dir / SITE_LEDGERS
    if not folder.is_dir():
        return None
    found: dict[int, tuple[LedgerRecord, ...]] = {}
    for path in sorted(folder.glob("client-*.jsonl")):
        rows = [row for row in (_jsonl_rows(path, warnings) or [])
                if run_id is None or row.get("run") in (None, run_id)]
        records = [r for r in map(_ledger_record, rows) if r is not None]
        if records:
            found[records[0].client_id] = tuple(records)
    return found


def _metrics(run_dir: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """Round rows from metrics.jsonl, sorted by round; [] with a warning if absent."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        warnings.append(f"metrics.jsonl is missing in {run_dir}: no accuracy, loss, "
                        "participation or traffic plots")
        return []
    rows = [r for r in (_jsonl_rows(path, warnings) or [])
            if isinstance(r.get("round"), int)]
    return sorted(rows, key=lambda r: r["round"])


def _he_json_fingerprint(folder: Path) -> str | None:
    """Find a 'fingerprint' recorded in a JSON file of the he/ folder."""
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("fingerprint"), str):
            return data["fingerprint"]
    return None


def _he_fingerprint(run_dir: Path, recorded: dict[str, Any]) -> tuple[str | None, str]:
    """Find the public-context fingerprint and say where it was found."""
    for key in ("he_fingerprint", "he_context_fingerprint"):
        if isinstance(recorded.get(key), str):
            return recorded[key], "recorded by the run"
    found = _he_json_fingerprint(run_dir / "he")
    if found:
        return found, "recorded in he/"
    try:
        digest = hashlib.sha256((run_dir / HE_CONTEXT).read_bytes()).hexdigest()
    except OSError:
        return None, ""
    return digest, f"SHA-256 of {HE_CONTEXT}"


def _he_info(run_dir: Path, config: dict[str, Any],
             summary: dict[str, Any] | None) -> HEInfo:
    """HE on/off, parameter set and public-context fingerprint."""
    if config.get("secure_agg") != "he":
        return HEInfo(on=False, params=None, fingerprint=None, fingerprint_source="")
    fingerprint, source = _he_fingerprint(run_dir, {**(summary or {}), **config})
    return HEInfo(on=True, params=config.get("he_params"), fingerprint=fingerprint,
                  fingerprint_source=source)


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a path that is not a run folder at all."""
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist")
    if not any((run_dir / name).is_file() for name in (*RUN_FILES, str(RUN_LEDGER))):
        raise ReportError(f"{run_dir} is not a fedsim run folder (none of "
                          f"{', '.join(RUN_FILES)} or {RUN_LEDGER} is there)")


def _unfinished_warning(run: dict[str, Any], rounds: int, records: int) -> str | None:
    """One line saying the run did not finish, or None when it did."""
    summary = run["summary"]
    if summary is not None and summary.get("finished"):
        return None
    why = ("no readable summary.json" if summary is None
           else "summary.json says finished=false")
    return (f"the run did not finish ({why}): this report covers the {rounds} round(s) "
            f"in metrics.jsonl and the {records} record(s) in the privacy ledger")


def load_run(run_dir: Path) -> RunData:
    """Read a run folder; raise ReportError only when it is not one at all."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    warnings: list[str] = []
    config = _read_json(run_dir / "config.json", warnings,
                        why="no configuration table, DP/HE settings unknown") or {}
    metrics = _metrics(run_dir, warnings)
    summary = _read_json(run_dir / "summary.json", warnings)
    # a deployment's server never sees the sites' data: no partitions.json by design
    deployed = (summary or {}).get("mode") == "deployment"
    parts = {"summary": summary,
             "partitions": _read_json(run_dir / "partitions.json", warnings,
                                      why=None if deployed else "no per-client data sizes")}
    ledger, has_ledger = _ledger(run_dir, warnings)
    federation = _read_json(run_dir / "federation.json", []) or {}
    sites = _site_ledgers(run_dir, federation.get("run_id"), warnings)
    if config.get("dp") and not has_ledger:
        warnings.append(f"{RUN_LEDGER} is missing in {run_dir} although DP was on: "
                        "no per-client epsilon")
    unfinished = _unfinished_warning(parts, len(metrics), len(ledger))
    if unfinished:
        warnings.insert(0, unfinished)
    return RunData(run_dir=run_dir, config=config, metrics=tuple(metrics),
                   ledger=tuple(ledger), has_ledger=has_ledger,
                   he=_he_info(run_dir, config, parts["summary"]),
                   warnings=tuple(warnings), site_ledgers=sites, **parts)


def finite(value: Any) -> float | None:
    """`value` as a finite float, else None (missing, null, NaN, inf, text)."""
    if _number(value) and math.isfinite(value):
        return float(value)
    return None
