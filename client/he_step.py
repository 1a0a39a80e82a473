"""The client's HE steps: find the site's own keys, verify and decrypt the global, encrypt.

A site trusts only its own configuration; whatever a message says is input to check:

- **Keys** (`site_keys`). In a deployment (node config ``he-key`` set) the key file,
  the passphrase (node config ``he-passphrase-file``, else ``FEDSIM_HE_PASSPHRASE``)
  and the expected key-set fingerprint (node config ``he-fingerprint``, else
  ``FEDSIM_HE_FINGERPRINT``, else the one bound into the site's own client.key) come
  from the site only; paths the server sends are never opened. A simulation (no
  ``he-key``) may use the paths the run sends, and only its own run folder's
  ``he/client.key`` and ``he/passphrase``, regular files in a 0700 folder. The
  server's announced fingerprint must equal the site's before anything is decrypted.
- **The global** (`global_state`). Decrypted and accepted only if its tags verify
  for the previous round (train) or this round (evaluate), bound to the run and to
  the global those contributions were trained on (`privacy.he_tag`); its presence
  marks show at least the site's floor of distinct contributors (node config
  ``he-min-contributors``, default 2). A plaintext global is accepted only in round 1
  and only if it is exactly the seeded initial model. A site trains at most once per
  round number and only in increasing rounds (kept in `Context.state`).
- **The site journal** (`client.site_journal`, durable across restarts): a run id
  belongs to the first Flower run that used it at this site; the site accepts one
  global per (key set, run id, summed round) and refuses other bytes for that round
  unopened; it contributes at most once per (key set, run id, round), in increasing
  rounds; after one global fails verification it refuses the rest of the run. The
  server only ever reads a fixed refusal text (details in the site's log): each
  refusal tells an adaptive server at most one bit, once per site and run.
  A simulated client (no ``he-key``) keys these promises per Flower run as well,
  so `fedsim run --resume` (a new Flower run of the same run id) goes on: in
  simulation the driver holds every key anyway (README).
- **The reply** (`encrypted_reply`): the update clipped to +-B, weighted, tagged for
  this round and this global, encrypted with the secret key.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from fedsim import protocol
from fedsim.client.site_journal import SiteJournal, site_journal
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.privacy.he import HEError
from fedsim.privacy.he_tag import (
    MAX_CLIENTS,
    MIN_CONTRIBUTORS,
    Binding,
    Layout,
    TagError,
    global_basis,
    initial_basis,
    open_global,
    seal_contribution,
)
from fedsim.privacy.keys import (
    PASSPHRASE_ENV,
    ClientKeySet,
    load_client_keys,
    read_regular,
)
from fedsim.protocol import encrypted_record, is_encrypted
from fedsim.settings import HESettings

log = logging.getLogger("fedsim.site")

NODE_KEY = "he-key"  # node config: this site's client.key
NODE_PASSPHRASE_FILE = "he-passphrase-file"  # node config: a file holding the passphrase
NODE_FINGERPRINT = "he-fingerprint"  # node config: the key set this site expects
NODE_MIN_CONTRIBUTORS = "he-min-contributors"  # node config: floor of distinct clients
FINGERPRINT_ENV = "FEDSIM_HE_FINGERPRINT"
_STATE = "fedsim-he"  # Context.state: the last round this site trained in
_PASSPHRASE_LIMIT = 4096


class SiteKeyError(HEError):
    """This site's HE keys cannot be used for the run (the reason stays in its log)."""


class RoundRefused(TagError):
    """A round this site trained in already (its reason reveals nothing secret)."""

    public_reason = None  # the server may read why


@dataclass(kw_only=True)
class Session:
    """One message's HE state: the site's keys, the run's layout, the global's basis."""

    keys: ClientKeySet
    run_id: str
    layout_clients: int
    min_contributors: int
    basis: bytes | None = None  # set once the global is accepted
    journal: SiteJournal | None = None  # the site's durable record (None: a bare check)
    scope: dict | None = None  # what journal entries are keyed by (`_scope`)

    def where(self, **more) -> dict:
        """The journal fields of this session's key set and run (and Flower run)."""
        return {"fingerprint": self.keys.fingerprint, "run": self.run_id,
                **(self.scope or {}), **more}


# --- keys: the site's own configuration ------------------------------------------


def session_for(he: HESettings, context: Context, data_dir: str | None,
                flower_run: int | None = None) -> Session:
    """The site's keys for this run, checked against the run's settings and journal.

    The server's announced key set must be the site's; `flower_run` (the Flower run
    id of the message) must own the run id in the site's journal.
    """
    node = context.node_config
    keys = _site_keys(he, node, data_dir)
    if he.fingerprint != keys.fingerprint:
        raise SiteKeyError(
            f"the run announces key set {he.fingerprint[:16]}, this site holds "
            f"{keys.fingerprint[:16]}; nothing was decrypted")
    clients = he.clients
    try:
        floor = int(node.get(NODE_MIN_CONTRIBUTORS, MIN_CONTRIBUTORS))
    except (TypeError, ValueError) as err:
        raise SiteKeyError(f"node config {NODE_MIN_CONTRIBUTORS} is no whole number "
                           f"({err!r})") from err
    if not 1 <= clients <= MAX_CLIENTS:
        raise SiteKeyError(f"the run announces {clients} clients; at most {MAX_CLIENTS}")
    if floor < 1 or clients < floor:
        raise SiteKeyError(f"the run announces {clients} client(s); this site requires "
                           f"sums of at least {max(floor, 1)} distinct contributors "
                           f"(node config {NODE_MIN_CONTRIBUTORS})")
    session = Session(keys=keys, run_id=he.run_id, layout_clients=clients,
                      min_contributors=floor,
                      journal=site_journal(node, data_dir),
                      scope=None if NODE_KEY in node else {"flower_run": flower_run})
    _check_run(session, flower_run)
    return session


def _check_run(session: Session, flower_run: int | None) -> None:
    """Bind the run id to its first Flower run; refuse a run this site gave up on."""
    journal, fp, run = session.journal, session.keys.fingerprint, session.run_id
    if journal.find("refused", **session.where()):
        raise SiteKeyError("this site refused a global of this run and refuses the rest "
                           "of it")
    owners = {e.get("flower_run") for e in journal.find("run", fingerprint=fp, run=run)}
    if owners and owners != {flower_run} and session.scope is None:
        raise SiteKeyError(f"run id {run[:40]!r} was already used by another Flower run at "
                           "this site; a run id is never reused (start a new run)")
    if flower_run not in owners:
        journal.append("run", fingerprint=fp, run=run, flower_run=flower_run)


def _site_keys(he: HESettings, node, data_dir: str | None) -> ClientKeySet:
    if NODE_KEY in node:  # a deployment site: its own config only
        key_path = str(node[NODE_KEY])
        passphrase_file = node.get(NODE_PASSPHRASE_FILE)
        expected = node.get(NODE_FINGERPRINT) or os.environ.get(FINGERPRINT_ENV) or None
    else:
        key_path, passphrase_file = _simulation_paths(he, data_dir)
        expected = None
    return _load(key_path, None if passphrase_file is None else str(passphrase_file),
                 None if expected is None else str(expected))


def _simulation_paths(he: HESettings, data_dir: str | None) -> tuple[str, str]:
    """The run folder's own key files, or a refusal that opens nothing."""
    if not data_dir:
        raise SiteKeyError(f"HE is on but this site has no key: set node config "
                           f"{NODE_KEY}=PATH (server-sent key paths are never used)")
    folder = Path(os.path.abspath(data_dir)).parent / "he"
    wanted = (str(folder / "client.key"), str(folder / "passphrase"))
    sent = (os.path.abspath(he.key_path), os.path.abspath(he.passphrase_file or ""))
    if sent != wanted:
        raise SiteKeyError("the run names key files outside its own run folder's he/; "
                           f"refused unopened (a deployment site sets {NODE_KEY})")
    info = folder.lstat() if folder.is_dir() and not folder.is_symlink() else None
    if info is None or info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise SiteKeyError(f"{folder} is not a folder private to this user (0700)")
    return wanted


@functools.lru_cache(maxsize=4)
def _load(key_path: str, passphrase_file: str | None, expected: str | None
          ) -> ClientKeySet:
    try:
        return load_client_keys(key_path, _passphrase(passphrase_file),
                                expect_fingerprint=expected)
    except HEError as err:
        log.error("HE key set unusable: %s", err)
        raise SiteKeyError(f"this site's HE key set cannot be used: {type(err).__name__} "
                           "(details in the site's log)") from err


def _passphrase(passphrase_file: str | None) -> str:
    """The site's passphrase: its own file (simulation: the run's), else the environment."""
    if passphrase_file:
        try:
            data = read_regular(Path(passphrase_file), _PASSPHRASE_LIMIT)
        except OSError as err:
            raise SiteKeyError(f"cannot read the passphrase file: {err.strerror}") from err
        return data.decode("utf-8", errors="strict").strip()
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    raise SiteKeyError(f"HE is on but {PASSPHRASE_ENV} is not set on this client")


# --- the global ---------------------------------------------------------------------


_DECRYPTED: dict[tuple, tuple[OrderedDict, bytes]] = {}  # per worker: last global opened


def global_state(record: ArrayRecord, model: torch.nn.Module, session: Session, *,
                 spec: ModelSpec, seed: int, server_round: int, stage: str) -> OrderedDict:
    """The verified plaintext global state; sets `session.basis` for the reply.

    `spec` and `seed` are the run's (round 1's plaintext global must be exactly the
    seeded initial model they build).

    A simulation worker serves many clients of one round, all sent the same global:
    it is verified and decrypted once per (content, expected round) and reused.
    """
    sum_round = server_round - 1 if stage == "train" else server_round
    if not is_encrypted(record):
        state, basis = _initial(record, spec, seed, server_round, stage)
    else:
        digest = _digest(record)
        journal, where = session.journal, session.where(round=sum_round)
        seen = [] if journal is None else journal.find("global", **where)
        if seen and seen[0].get("digest") != digest:
            raise TagError(f"another global of round {sum_round} was accepted already; "
                           "this one is refused unopened")
        key = (digest, sum_round, session.run_id, session.keys.fingerprint,
               session.layout_clients, session.min_contributors)
        if key not in _DECRYPTED:
            _DECRYPTED.clear()
            _DECRYPTED[key] = _verified(record, model, session, sum_round)
        state, basis = _DECRYPTED[key]
        if journal is not None and not seen:
            journal.append("global", digest=digest, **where)
    session.basis = basis
    return OrderedDict((k, v.clone()) for k, v in state.items())


def _initial(record: ArrayRecord, spec: ModelSpec, seed: int, server_round: int,
             stage: str) -> tuple[OrderedDict, bytes]:
    """Round 1's plaintext global, accepted only as exactly the seeded initial model."""
    if stage != "train" or server_round != 1:
        raise TagError(f"a plaintext global in round {server_round} of an HE run; only "
                       "round 1 starts from the seeded initial model")
    with torch.random.fork_rng(devices=[]):  # leave the process's RNG as it was
        torch.manual_seed(seed)
        own = build_model(spec).state_dict()
    sent = record.to_torch_state_dict()
    same = list(sent) == list(own) and all(
        sent[k].shape == own[k].shape and torch.equal(sent[k], own[k]) for k in own)
    if not same:
        raise TagError("the plaintext global of round 1 is not the seeded initial model")
    return OrderedDict(own), initial_basis(spec.to_dict(), seed)


def _digest(record: ArrayRecord) -> str:
    """SHA-256 of a global as sent (ciphertexts and metadata), before any decryption."""
    blobs = protocol.ciphertext_blobs(record)
    return global_basis(blobs, list(_metadata(record))).hex()


def _verified(record: ArrayRecord, model: torch.nn.Module, session: Session,
              sum_round: int) -> tuple[OrderedDict, bytes]:
    """`_open`, failing closed: a refused global ends this run at this site (journal)."""
    try:
        return _open(record, model, session, sum_round)[:2]
    except Exception as err:
        log.error("global of round %d refused: %s", sum_round, err)
        if session.journal is not None:
            session.journal.append("refused", **session.where(round=sum_round))
        if isinstance(err, TagError):
            raise
        raise TagError(f"the global cannot be opened: {err}") from err


def _metadata(record: ArrayRecord) -> tuple[float, int, bytes]:
    try:
        return protocol.sum_metadata(record)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise TagError(f"the encrypted global lacks its weight, round or basis ({err!r})"
                       ) from err


def _open(record: ArrayRecord, model: torch.nn.Module, session: Session, sum_round: int
          ) -> tuple[OrderedDict, bytes, tuple[int, ...]]:
    total, claimed_round, basis = _metadata(record)
    if claimed_round != sum_round:
        raise TagError(f"the global sums round {claimed_round}, expected round {sum_round}")
    reference = model.state_dict()
    shapes = [tuple(t.shape) for t in reference.values()]
    blobs = protocol.ciphertext_blobs(record)
    arrays, opened = open_global(
        session.keys.context, blobs, shapes=shapes, secret=session.keys.tag_secret,
        binding=Binding(run_id=session.run_id, round=sum_round, basis=basis),
        layout=layout_for(model, session), announced_weight=total,
        min_contributors=session.min_contributors, fingerprint=session.keys.fingerprint)
    state = OrderedDict((k, torch.from_numpy(np.asarray(a, dtype=np.float32)))
                        for k, a in zip(reference.keys(), arrays, strict=True))
    return state, global_basis(blobs, [total, claimed_round, basis]), opened.contributors


def layout_for(model: torch.nn.Module, session: Session) -> Layout:
    """The run's slot layout: this model's size and the announced number of clients."""
    n = sum(t.numel() for t in model.state_dict().values())
    return Layout(num_params=n, num_clients=session.layout_clients)


def claim_round(context: Context, server_round: int, session: Session | None = None
                ) -> None:
    """Train at most once per round, in increasing rounds (a replayed round is refused).

    With the session's journal this holds for the (key set, run id) across Flower
    runs and client restarts: the claim is on disk before anything is trained.
    """
    record = context.state.config_records.get(_STATE)
    last = int(record["last-round"]) if record is not None else 0
    journal = None if session is None else session.journal
    if journal is not None:
        where = session.where()
        last = max([last, *(int(e.get("round", 0)) for e in journal.find("contributed",
                                                                          **where))])
    if server_round <= last:
        raise RoundRefused(f"round {server_round} asked after round {last}: this site trains "
                       "once per round, in increasing rounds")
    if journal is not None:
        journal.append("contributed", round=server_round, **where)
    context.state.config_records[_STATE] = ConfigRecord({"last-round": server_round})


# --- the reply ------------------------------------------------------------------------


def encrypted_reply(model: torch.nn.Module, weight: float, session: Session, *,
                    client_id: int, server_round: int) -> tuple[ArrayRecord, ConfigRecord]:
    """The clipped, weighted, tagged update as ciphertexts, and what it is bound to."""
    if session.basis is None:
        raise TagError("no verified global to reply to")
    arrays = [t.detach().cpu().numpy() for t in model.state_dict().values()]
    binding = Binding(run_id=session.run_id, round=server_round, basis=session.basis)
    blobs, clipped = seal_contribution(
        session.keys.context, arrays, weight, client_id, secret=session.keys.tag_secret,
        binding=binding, layout=layout_for(model, session),
        fingerprint=session.keys.fingerprint)
    if clipped:
        log.warning("client %d: %d value(s) clipped to the HE bound before encryption",
                    client_id, clipped)
    return (encrypted_record(blobs, None),
            ConfigRecord({protocol.HE_FINGERPRINT: session.keys.fingerprint,
                          protocol.HE_ROUND: server_round,
                          protocol.HE_BASIS: session.basis.hex()}))



# --- the run's final model, for a key holder ------------------------------------------


ENCRYPTED_MODEL = "model_encrypted.npz"
ENCRYPTED_MODEL_INFO = "model_encrypted.json"


def open_final_model(run_dir: Path, keys: ClientKeySet, *,
                     min_contributors: int = MIN_CONTRIBUTORS,
                     expected_round: int | None = None
                     ) -> tuple[OrderedDict, tuple[int, ...], int]:
    """Verify and decrypt a run's model_encrypted.npz: state dict, contributors, round.

    The same checks a client makes on a global (tags for the round it sums, bound to
    the run, presence marks, weight, capacity), a floor of `min_contributors`, and
    the round it sums must be `expected_round` (the run's last completed round: an
    earlier round's sum, or one client's lone contribution, is refused); raises
    TagError or HEError.
    """
    import json

    info = json.loads((run_dir / ENCRYPTED_MODEL_INFO).read_text())
    if info.get("fingerprint") != keys.fingerprint:
        raise SiteKeyError(f"{run_dir} was encrypted under key set "
                           f"{str(info.get('fingerprint'))[:16]}, this key is "
                           f"{keys.fingerprint[:16]}")
    with np.load(run_dir / ENCRYPTED_MODEL, allow_pickle=False) as data:
        record = ArrayRecord({k: Array(np.ascontiguousarray(data[k])) for k in data.files})
    model = build_model(ModelSpec.from_dict(info["model"]))
    session = Session(keys=keys, run_id=str(info["run_id"]),
                      layout_clients=int(info["clients"]), min_contributors=min_contributors)
    _, sum_round, _ = _metadata(record)
    if expected_round is not None and sum_round != expected_round:
        raise TagError(f"the model sums round {sum_round}, the run completed round "
                       f"{expected_round}")
    state, _, contributors = _open(record, model, session, sum_round)
    return state, contributors, sum_round
