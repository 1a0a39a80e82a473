"""The client's DP step: its own privacy ledger, its budget, DP-SGD with secret noise.

What a client has spent is the client's to keep. Each client holds an append-only,
fsync'd ledger (`fedsim.privacy.ledger`) of every update it released; it writes the
release's record *before* its reply leaves, so a reply that is lost, late or
refused still counts. Before training it merges that history with the server's
copy (sent in the message) by release: a record the server has that the site
lacks is added (the server can make a client count more), but nothing the server
sends, omits or shortens removes a release the site made. A site whose ledger
cannot be read or written refuses DP training (fail closed).

Where the ledger lives (`site_ledger_path`):

1. node config `privacy-dir` (a SuperNode's `--node-config`);
2. simulation: the run folder's ``privacy/clients/`` (the driver says where; a
   simulated client has no data folder of its own);
3. environment variable ``FEDSIM_PRIVACY_DIR``;
4. ``$FLWR_HOME/fedsim-privacy`` (``~/.flwr/fedsim-privacy``), the SuperNode's own
   Flower folder: keep it on storage that outlives the process.

Flower's SuperNode keeps `Context.state` in memory only, so it is not used for
anything the guarantee rests on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message

from fedsim import protocol
from fedsim.client.dp_noise import client_delta, noise_for
from fedsim.errors import ConfigError, FedsimError
from fedsim.privacy.accounting import (
    RUN_ACCOUNTANTS,
    STEPS_MAX,
    check_history,
    epsilon,
    sample_rate,
    steps_per_participation,
    would_exceed,
)
from fedsim.privacy.ledger import (
    EXHAUSTED,
    RELEASED,
    LedgerError,
    LedgerRecord,
    PrivacyLedger,
)
from fedsim.settings import ClientSettings, DPSettings

log = logging.getLogger("fedsim.site")

NODE_CONFIG_KEY = "privacy-dir"
ENV_VAR = "FEDSIM_PRIVACY_DIR"
FLWR_SUBDIR = "fedsim-privacy"
RELEASE_ID_BITS = 53  # exactly representable as a float, should anything convert it

Entry = tuple[int, int | None, float, float, int]
"""One release: (round, release id or None, noise multiplier, sample rate, steps)."""


@dataclass(frozen=True, kw_only=True)
class DPOutcome:
    """What one DP participation produced (or why it did not train)."""

    exhausted: bool
    metrics: dict


# ---------------------------------------------------------------- the site's ledger


def is_simulated(msg: Message, context: Context) -> bool:
    """A simulated client: the driver's store holds its data, it has no folder of its own.

    A real site always has node config `data-dir`; only then does it decide for
    itself (a server cannot make a site believe it is simulated).
    """
    return ("data-dir" not in context.node_config
            and protocol.DATA_DIR in msg.content[protocol.CONFIG])


def _flwr_home() -> Path:
    home = os.environ.get("FLWR_HOME")
    return Path(home) if home else Path.home() / ".flwr"


def site_ledger_path(msg: Message, context: Context, client_id: int) -> Path:
    """This client's own ledger file (see the module docstring for the order)."""
    folder, default = _ledger_folder(msg, context)
    if default:
        _note_default_folder(str(folder))
    return folder / f"client-{client_id}.jsonl"


def _ledger_folder(msg: Message, context: Context) -> tuple[Path, bool]:
    """(the folder of this site's ledgers, whether it is the default one)."""
    config = msg.content[protocol.CONFIG]
    if not context.node_config.get(NODE_CONFIG_KEY) and is_simulated(msg, context) \
            and protocol.SIM_PRIVACY_DIR in config:
        return Path(str(config[protocol.SIM_PRIVACY_DIR])), False
    return site_state_folder(context.node_config)


def site_state_folder(node_config) -> tuple[Path, bool]:
    """(a site's own writable folder, whether it is the default one).

    Node config `privacy-dir`, else $FEDSIM_PRIVACY_DIR, else the SuperNode's Flower
    folder: never the data folder, which a site may mount read-only.
    """
    node_dir = node_config.get(NODE_CONFIG_KEY)
    if node_dir:
        return Path(str(node_dir)), False
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), False
    return _flwr_home() / FLWR_SUBDIR, True


def refuse_dp_switched_off(msg: Message, context: Context, settings: ClientSettings,
                           client_id: int) -> None:
    """A run a site took part in with DP stays a DP run for it.

    A message of that run without DP (the server switching it off, say once the
    budget is spent) is refused for training and evaluation alike. Deployed sites
    only: a simulated client's ledger folder is the driver's to name.
    """
    if settings.dp is not None or is_simulated(msg, context):
        return
    path = _ledger_folder(msg, context)[0] / f"client-{client_id}.jsonl"
    if path.exists() and run_records(PrivacyLedger(path),
                                     run_keys(msg, context, settings), client_id):
        raise FedsimError("this site took part in this run with DP; it neither trains "
                          "nor evaluates for it without DP")


@functools.lru_cache(maxsize=8)
def _note_default_folder(folder: str) -> None:
    log.warning("site privacy ledger in %s (no node config '%s' nor $%s): keep it on "
                "storage that outlives this SuperNode", folder, NODE_CONFIG_KEY, ENV_VAR)


@dataclass(frozen=True, kw_only=True)
class RunKeys:
    """Which run a participation belongs to, and which records count against it."""

    run: str  # recorded as the record's `run`
    flower_run: str | None  # deployment: this message's own Flower run, from the SuperNode

    def made_here(self, record: LedgerRecord) -> bool:
        """A record made in this message's own Flower run (whatever run it named)."""
        own = self.flower_run
        return own is not None and (record.flower_run == own or (
            record.flower_run is None and record.run == own))

    def covers(self, record: LedgerRecord) -> bool:
        """A record of this Flower run, or of the run it continues (any Flower run)."""
        if self.flower_run is None:  # simulation: the driver's run id
            return record.run == self.run
        if self.made_here(record):
            return True
        return self.run != self.flower_run and self.run in (record.run, record.flower_run)


def run_keys(msg: Message, context: Context, settings: ClientSettings) -> RunKeys:
    """The run a release belongs to: the driver's run id, or Flower's in deployment.

    A deployed site takes its Flower run id from its own SuperNode. A resumed run
    (`fedsim deploy submit --resume`) is a new Flower run that names its first one
    (settings `run_id`); the site records under that name and counts every record
    of that run *and* every record made in its own Flower run, whatever name those
    claimed. A claim can so only add to what a participation counts: claiming
    another run, several runs or none never hides a release of this Flower run. A
    Flower run that claims nothing counts only its own records (another run's
    claim to continue it cannot tighten its terms).
    """
    claimed = settings.run_id
    if is_simulated(msg, context) and claimed:
        return RunKeys(run=claimed, flower_run=None)
    own = protocol.flower_run_key(context.run_id)
    if claimed is None or claimed == own:
        return RunKeys(run=own, flower_run=own)
    if not protocol.is_flower_run_key(claimed):
        raise FedsimError(f"the run names itself {str(claimed)[:40]!r}, which is no "
                          "deployed run's id; this site does not train for it")
    return RunKeys(run=claimed, flower_run=own)


def _records(ledger: PrivacyLedger) -> list[LedgerRecord]:
    try:
        return ledger.records()
    except OSError as err:
        raise LedgerError(f"site privacy ledger {ledger.path} cannot be read ({err}); "
                          "this site trains no DP round until it can") from err


def _append(ledger: PrivacyLedger, record: LedgerRecord) -> None:
    try:
        ledger.append(record)
    except OSError as err:
        raise LedgerError(f"site privacy ledger {ledger.path} cannot be written ({err}); "
                          "this site releases no DP update it cannot record") from err


def run_records(ledger: PrivacyLedger, run: RunKeys, client_id: int
                ) -> list[LedgerRecord]:
    """This client's records that count for this run: its own Flower run's first.

    Oldest first within each part, so that the terms the first participation of
    this Flower run pinned (`site_terms`: the accountant) are never switched by a
    later claim to continue another run.
    """
    mine = [r for r in _records(ledger) if run.covers(r) and r.client_id == client_id]
    return [r for r in mine if run.made_here(r)] + [r for r in mine if not run.made_here(r)]


def own_history(ledger: PrivacyLedger, run: RunKeys, client_id: int
                ) -> tuple[list[Entry], bool]:
    """(this run's releases from the site's ledger, whether it already ran out)."""
    mine = run_records(ledger, run, client_id)
    return _entries(mine), any(r.exhaustion_marker for r in mine)


def _entries(records: list[LedgerRecord]) -> list[Entry]:
    return [(r.round, r.release, r.noise_multiplier, r.sample_rate, r.steps)
            for r in records if r.spends]


MAX_SERVER_HISTORY = 1000
"""Entries of the server's history a site reads at most (a run has one a round)."""
MAX_SERVER_STEP_KINDS = 16
"""Distinct (noise, rate) pairs a server history may hold (one DP analysis each, up
to a second apiece; a site's own releases use one or a few)."""


def parse_server_history(text: str | None) -> list[Entry]:
    """The server's copy: [round, release, noise, rate, steps] (or old [noise, rate, steps]).

    Anything malformed is ignored with a warning: the site's own ledger is the
    authority, the server's copy can only add to it. Each entry must hold finite
    numbers an accountant can take (noise >= 0, rate in (0, 1], 1 to STEPS_MAX
    steps); a history longer than MAX_SERVER_HISTORY is ignored whole.
    """
    if not text:
        return []
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as err:
        log.warning("ignored a malformed privacy history from the server (%s)", err)
        return []
    if not isinstance(items, list) or len(items) > MAX_SERVER_HISTORY:
        log.warning("ignored the server's privacy history: not a list of at most %d "
                    "entries", MAX_SERVER_HISTORY)
        return []
    entries = [e for e in map(_server_entry, items) if e is not None]
    if len({(e[2], e[3]) for e in entries}) > MAX_SERVER_STEP_KINDS:
        log.warning("ignored the server's privacy history: more than %d distinct "
                    "(noise, rate) pairs", MAX_SERVER_STEP_KINDS)
        return []
    if len(entries) < len(items):
        log.warning("ignored %d malformed entries of the server's privacy history",
                    len(items) - len(entries))
    return entries


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _server_entry(item: object) -> Entry | None:
    if not isinstance(item, list) or len(item) not in (3, 5):
        return None
    rnd, release, noise, rate, steps = item if len(item) == 5 else (0, None, *item)
    if not _whole(rnd) or not (release is None or _whole(release)) or not _whole(steps) \
            or not 0 < steps <= STEPS_MAX:
        return None
    try:
        check_history([(noise, rate, steps)])
    except ConfigError:
        return None
    return (rnd, release, float(noise), float(rate), steps)


def merge_histories(own: list[Entry], server: list[Entry]) -> list[Entry]:
    """Every release the site made, plus those only the server knows of.

    Merged by release (run and round are the same for a re-run round, the release
    id is not): a server entry naming a release the site holds is the same
    release; any other is added. So the result never has less than the site's own.
    """
    known = {e[1] for e in own if e[1] is not None}
    return own + [e for e in server if e[1] is None or e[1] not in known]


# ---------------------------------------------------------------- noise and budget


@dataclass(frozen=True, kw_only=True)
class SiteTerms:
    """The DP terms a site holds itself to in one run: only ever tightened.

    A message's delta, accountant and budget are input to check: the first
    participation in a run fixes them in the site's ledger, and later messages can
    lower the budget or delta, never raise them, nor change the accountant.
    """

    delta: float
    accountant: str
    budget: float | None


def site_terms(dp: DPSettings, *, n: int, records: list[LedgerRecord],
               policy_cap: float | None) -> SiteTerms:
    """This participation's terms: the message's, checked, tightened by the ledger's.

    - accountant: rdp or prv (gdp can understate); the run's first record's once
      there is one;
    - delta: below 1/n; the smallest of the message's and every record's;
    - budget: the smallest of the message's epsilon_budget and target_epsilon,
      the site policy's max-epsilon and every budget this run's records hold.

    The message's numbers are finite and > 0 (`ClientSettings.decode` refuses
    others); what depends on this site (n, its ledger, its policy) is checked here.
    """
    accountant = dp.accountant
    if accountant not in RUN_ACCOUNTANTS:
        raise FedsimError(f"the run asks for accountant {accountant!r}; this site "
                          f"accounts with one of {', '.join(RUN_ACCOUNTANTS)} only")
    delta = client_delta(dp, n)
    if delta >= 1.0 / n:
        raise FedsimError(f"the run's delta {delta:g} is not below 1/n = {1.0 / n:g} "
                          f"for this site's {n} examples; this site does not train on it")
    pinned = [r.accountant for r in records if r.accountant in RUN_ACCOUNTANTS]
    if pinned and pinned[0] != accountant:
        log.warning("the run now asks for accountant %s; this site keeps %s, which its "
                    "first participation in the run used", accountant, pinned[0])
    caps = [dp.epsilon_budget, dp.target_epsilon, policy_cap,
            *(r.budget for r in records)]
    caps = [float(c) for c in caps if c is not None]
    return SiteTerms(
        delta=min([delta, *(r.delta for r in records if 0 < r.delta < 1)]),
        accountant=pinned[0] if pinned else accountant,
        budget=min(caps) if caps else None)


def policy_cap(context: Context) -> float | None:
    """The site policy's max-epsilon (node config `policy`), a budget of its own."""
    from fedsim.client.policy import site_policy

    policy = site_policy(context.node_config)
    return None if policy is None else policy.max_epsilon


def dp_randomness(settings: ClientSettings, *, server_round: int, client_id: int):
    """The source of this participation's Poisson batches and noise.

    Secret (a key from this process's OS entropy) unless the run asked for
    `--insecure-reproducible-noise`, which derives it from (seed, round, client):
    numbers the server knows, so it can recompute and remove all of the noise.
    """
    from fedsim.client.dp_random import DPRandomness

    if settings.dp.insecure_reproducible_noise:
        return DPRandomness.reproducible(settings.seed, server_round, client_id)
    return DPRandomness.secret_source()


def refuse_insecure_noise(msg: Message, context: Context, settings: ClientSettings) -> None:
    """A real site never lets the server choose its noise (simulations may)."""
    if settings.dp is not None and settings.dp.insecure_reproducible_noise \
            and not is_simulated(msg, context):
        raise FedsimError("the run asks for --insecure-reproducible-noise, which lets "
                          "the server remove this site's DP noise; a site never "
                          "accepts it (use it in simulations only)")


def _steps(history: list[Entry]) -> list[tuple[float, float, int]]:
    return [(e[2], e[3], e[4]) for e in history]


def _record(*, run: RunKeys, server_round: int, client_id: int,
            step: tuple[float, float, int], delta: float, accountant: str, eps: float,
            budget: float | None, outcome: str, release: int | None) -> LedgerRecord:
    return LedgerRecord(run=run.run, flower_run=run.flower_run, round=server_round,
                        client_id=client_id,
                        noise_multiplier=step[0], sample_rate=step[1], steps=step[2],
                        delta=delta, accountant=accountant, epsilon=eps, budget=budget,
                        released=outcome == RELEASED, release=release, outcome=outcome)


def dp_train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, msg: Message,
             context: Context, settings: ClientSettings, device: torch.device,
             client_id: int) -> tuple[DPOutcome, object | None]:
    """Check the budget on the site's own history, train with DP-SGD, record the release.

    The release's record is on disk before this returns (and so before the reply
    is sent): a reply the server never sees, or refuses, still counts here.
    """
    from fedsim.client.dp import train_dp

    refuse_insecure_noise(msg, context, settings)
    config = msg.content[protocol.CONFIG]
    server_round = int(config[protocol.ROUND])
    dp, n = settings.dp, len(y)
    batch_size, local_epochs = settings.batch_size, settings.local_epochs
    ledger = PrivacyLedger(site_ledger_path(msg, context, client_id))
    run = run_keys(msg, context, settings)
    # read history, decide, train, append: one message of this site at a time, so that
    # two of one run handled at once cannot both pass the budget on the same history
    with ledger.exclusive():
        records = run_records(ledger, run, client_id)
        terms = site_terms(dp, n=n, records=records, policy_cap=policy_cap(context))
        sent = config.get(protocol.DP_HISTORY)
        history = merge_histories(_entries(records), parse_server_history(
            None if sent is None else str(sent)))
        noise = noise_for(dp, n=n, batch_size=batch_size, local_epochs=local_epochs,
                          rounds=settings.rounds)
        delta, accountant, budget = terms.delta, terms.accountant, terms.budget
        planned = (noise, sample_rate(n, batch_size),
                   steps_per_participation(n, batch_size, local_epochs))
        common = dict(run=run, server_round=server_round, client_id=client_id, delta=delta,
                      accountant=accountant, budget=budget)
        if budget is not None and would_exceed(_steps(history), planned, delta=delta,
                                               accountant=accountant, budget=budget)[0]:
            eps_now = epsilon(_steps(history), delta=delta, accountant=accountant)
            _append(ledger, _record(**common, step=(0.0, 0.0, 0), eps=eps_now,
                                    outcome=EXHAUSTED, release=None))
            return DPOutcome(exhausted=True, metrics={
                protocol.DP_EXHAUSTED: 1, protocol.DP_EPSILON: eps_now,
                protocol.DP_DELTA: delta}), None
        result = train_dp(model, x, y, epochs=local_epochs, batch_size=batch_size,
                          lr=settings.lr, noise_multiplier=noise,
                          max_grad_norm=dp.max_grad_norm,
                          device=device, proximal_mu=settings.proximal_mu,
                          randomness=dp_randomness(settings, server_round=server_round,
                                                   client_id=client_id))
        step = (noise, result.sample_rate, result.steps)
        eps = epsilon([*_steps(history), step], delta=delta, accountant=accountant)
        release = secrets.randbits(RELEASE_ID_BITS)
        _append(ledger, _record(**common, step=step, eps=eps, outcome=RELEASED,
                                release=release))
        return DPOutcome(exhausted=False, metrics={
            protocol.DP_NOISE: noise, protocol.DP_SAMPLE_RATE: result.sample_rate,
            protocol.DP_STEPS: result.steps, protocol.DP_DELTA: delta,
            protocol.DP_EPSILON: eps, protocol.DP_EXHAUSTED: 0,
            protocol.DP_RELEASE: release, protocol.DP_ROUND: server_round}), result


def exhausted_for_evaluation(msg: Message, context: Context, settings: ClientSettings,
                             client_id: int) -> bool:
    """Has this client run out of budget in this run? Then it sends no eval metrics."""
    if settings.dp is None:
        return False
    ledger = PrivacyLedger(site_ledger_path(msg, context, client_id))
    return own_history(ledger, run_keys(msg, context, settings), client_id)[1]
