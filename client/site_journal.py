"""A site's journal: what this site has done in runs, durable across client restarts.

Some promises a site makes must outlive one Flower run and one client process
(accept one global per round, contribute once per round, stop after a refused
global). Flower's `Context.state` lives only as long as the run, so the site keeps
them in a small append-only file of JSON lines of its own: each entry is written
and fsync'd before the step it records takes effect, and entries are never
rewritten. A line that does not parse (a torn last write) is ignored; a journal
that cannot be read or written refuses the step (fail closed).

Where it lives is the site's own configuration (node config ``site-journal``, else
``site-journal.jsonl`` beside the site's privacy ledgers: node config
``privacy-dir``, ``$FEDSIM_PRIVACY_DIR`` or ``$FLWR_HOME/fedsim-privacy``; never the
data folder, which compose mounts read-only); a simulated client keeps one per
client under its run folder (``sites/client-N.jsonl``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from fedsim.errors import FedsimError

NODE_JOURNAL = "site-journal"  # node config: this site's journal file
_LIMIT = 64 * 1024 * 1024  # a journal beyond this is not ours: refuse


class JournalError(FedsimError):
    """The site's journal cannot be read or written: the step it guards is refused."""


class SiteJournal:
    """Append-only JSON lines, each fsync'd; read back whole (journals stay small)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def entries(self, kind: str | None = None) -> Iterator[dict]:
        """Every parsable entry (of `kind`, when given), oldest first."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(_LIMIT + 1)
        except FileNotFoundError:
            return
        except OSError as err:
            raise JournalError(f"site journal {self.path} cannot be read "
                               f"({err.strerror})") from err
        if len(data) > _LIMIT:
            raise JournalError(f"site journal {self.path} is over {_LIMIT} bytes")
        for line in data.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line: the step it would record never happened
            if isinstance(entry, dict) and (kind is None or entry.get("kind") == kind):
                yield entry

    def find(self, kind: str, **fields) -> list[dict]:
        """The entries of `kind` whose `fields` all equal the given values."""
        return [e for e in self.entries(kind)
                if all(e.get(k) == v for k, v in fields.items())]

    def append(self, kind: str, **fields) -> None:
        """Write one entry and fsync it (and, for a new file, its folder)."""
        line = json.dumps({"kind": kind, **fields}, sort_keys=True).encode() + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as err:
            raise JournalError(f"site journal {self.path} cannot be written "
                               f"({err.strerror})") from err


def site_journal(node_config, data_dir: str | None) -> SiteJournal:
    """This site's journal: node config `site-journal`, else beside its ledgers.

    A simulated client (no ``he-key``, its data prepared by the driver) keeps one per
    client in its run folder; a site that names neither a journal nor a data folder
    cannot keep its promises and is refused.
    """
    if NODE_JOURNAL in node_config:
        return SiteJournal(str(node_config[NODE_JOURNAL]))
    if "data-dir" in node_config:  # the ledger's folder: the data may be read-only
        from fedsim.client.dp_step import site_state_folder

        return SiteJournal(site_state_folder(node_config)[0] / "site-journal.jsonl")
    if data_dir and "he-key" not in node_config:
        client = int(node_config.get("partition-id", 0))
        return SiteJournal(Path(os.path.abspath(data_dir)).parent / "sites" /
                           f"client-{client}.jsonl")
    raise JournalError(f"this site has no journal: set node config {NODE_JOURNAL}=PATH "
                       "(or data-dir)")


def refuse_he_switched_off(node_config, data_dir: str | None, flower_run: int
                           ) -> None:
    """A Flower run a site took part in under HE stays an HE run for it.

    A plaintext message of that run (the server dropping "he" from the settings to
    read the site's update, or to slip it a plaintext global) is refused for
    training and evaluation alike. A site with no journal never took part under HE.
    """
    try:
        journal = site_journal(node_config, data_dir)
    except JournalError:
        return
    if journal.find("run", flower_run=flower_run):
        raise FedsimError("this site took part in this run under HE; it neither trains "
                           "nor evaluates for it in plaintext")
