"""The client's HE steps: decrypt the encrypted global sum, encrypt the weighted update.

The secret context is read from the provisioned, passphrase-protected key file and
cached per process; its fingerprint must match the one the server announces.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedsim import protocol
from fedsim.privacy.he import decrypt_average, encrypt_update
from fedsim.privacy.keys import PASSPHRASE_ENV, load_client_context
from fedsim.protocol import ciphertext_blobs, encrypted_record, is_encrypted


class ClientKeys(NamedTuple):
    """The secret context and the fingerprint of the key set it belongs to."""

    context: object
    fingerprint: str


def _passphrase(passphrase_file: str | None) -> str:
    """The run's own passphrase file (simulation) wins; else the site's environment.

    A simulation provisions its key set with a random passphrase kept beside it, so
    a FEDSIM_HE_PASSPHRASE a user has set for deployments must not override it.
    """
    if passphrase_file:
        return Path(passphrase_file).read_text(encoding="utf-8").strip()
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    raise RuntimeError(f"HE is on but {PASSPHRASE_ENV} is not set on this client")


@functools.lru_cache(maxsize=4)
def secret_context(key_path: str, passphrase_file: str | None, fingerprint: str
                   ) -> ClientKeys:
    """The client's secret TenSEAL context, checked against the run's fingerprint."""
    ctx = load_client_context(key_path, _passphrase(passphrase_file),
                              expect_fingerprint=fingerprint)
    return ClientKeys(context=ctx, fingerprint=fingerprint)


def context_for(he: dict, node_config) -> ClientKeys:
    """Resolve the key file (a site's node config wins over the run's default)."""
    key_path = str(node_config.get("he-key", he["key_path"]))
    return secret_context(key_path, he.get("passphrase_file"), he["fingerprint"])


_DECRYPTED: dict[str, OrderedDict] = {}  # per worker process: last global decrypted


def global_state(record: ArrayRecord, model: torch.nn.Module, keys: ClientKeys
                 ) -> OrderedDict:
    """The plaintext global state: as sent, or decrypted and divided by the weight.

    A simulation worker serves many clients of the same round, all sent the same
    encrypted global; it is decrypted once (keyed by Flower's content hash of the
    record) and reused.
    """
    if not is_encrypted(record):
        return record.to_torch_state_dict()
    key = record.object_id
    if key not in _DECRYPTED:
        _DECRYPTED.clear()
        _DECRYPTED[key] = _decrypt(record, model, keys)
    return OrderedDict((k, v.clone()) for k, v in _DECRYPTED[key].items())


def _decrypt(record: ArrayRecord, model: torch.nn.Module, keys: ClientKeys
             ) -> OrderedDict:
    reference = model.state_dict()
    total = float(record[protocol.HE_TOTAL_WEIGHT].numpy()[0])
    arrays = decrypt_average(keys.context, ciphertext_blobs(record),
                             shapes=[tuple(t.shape) for t in reference.values()],
                             total_weight=total, fingerprint=keys.fingerprint)
    return OrderedDict((k, torch.from_numpy(np.asarray(a, dtype=np.float32)))
                       for k, a in zip(reference.keys(), arrays, strict=True))


def encrypted_reply(model: torch.nn.Module, weight: float, keys: ClientKeys
                    ) -> tuple[ArrayRecord, ConfigRecord]:
    """The weighted update as ciphertexts, and the fingerprint they were made under."""
    arrays = [t.detach().cpu().numpy() for t in model.state_dict().values()]
    blobs = encrypt_update(keys.context, arrays, weight, fingerprint=keys.fingerprint)
    return (encrypted_record(blobs, None),
            ConfigRecord({protocol.HE_FINGERPRINT: keys.fingerprint}))
