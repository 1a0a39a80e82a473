"""`fedsim keys`: provision and inspect the CKKS keys of secure aggregation.

The passphrase that protects client.key comes from FEDSIM_HE_PASSPHRASE or a hidden
prompt, never from a flag (flags land in shell history and process lists).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim.cli.tables import label_table
from fedsim.errors import ConfigError
from fedsim.privacy.he import HEError, ParamSetName, get_params
from fedsim.privacy.he_tag import CLIP_BOUND
from fedsim.privacy.keys import (
    PASSPHRASE_ENV,
    PassphraseError,
    key_info,
    load_client_keys,
    provision,
    read_passphrase,
)

# client.key is guarded by scrypt (about 0.1 s and 32 MiB per guess): whoever copies
# the file can guess offline. 12 characters drawn from at least 6 different ones rule
# out words, names and keyboard runs of a few letters; a few random words pass.
MIN_PASSPHRASE_LENGTH = 12
MIN_DISTINCT_CHARACTERS = 6


class PassphraseRefused(PassphraseError):
    """A new key set's passphrase is missing (no terminal) or too weak: bad input."""

    exit_code = 2

app = typer.Typer(
    help="Provision and inspect CKKS keys for secure aggregation. The passphrase "
    f"comes from ${PASSPHRASE_ENV} or a hidden prompt, never a flag.",
    no_args_is_help=True,
    add_completion=False,
)


def check_strength(passphrase: str) -> None:
    """Refuse a passphrase too weak to guard a copied client.key."""
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise PassphraseRefused(
            f"the passphrase has {len(passphrase)} characters; use at least "
            f"{MIN_PASSPHRASE_LENGTH} (a few random words work): it is all that guards "
            "client.key against anyone who copies the file")
    if len(set(passphrase)) < MIN_DISTINCT_CHARACTERS:
        raise PassphraseRefused(
            f"the passphrase uses only {len(set(passphrase))} different characters; use "
            f"at least {MIN_DISTINCT_CHARACTERS} (a few random words work)")


def new_passphrase() -> str:
    """The passphrase for a new key set: $FEDSIM_HE_PASSPHRASE or a prompt, checked."""
    if os.environ.get(PASSPHRASE_ENV) is None and not sys.stdin.isatty():
        raise PassphraseRefused(
            f"no terminal to ask for the passphrase: set {PASSPHRASE_ENV} "
            f"(e.g. read -rs {PASSPHRASE_ENV}; export {PASSPHRASE_ENV}) and run again")
    passphrase = read_passphrase(confirm=True)
    check_strength(passphrase)
    return passphrase


@app.command("init")
def init(
    out: Annotated[
        Path, typer.Option(help="Folder to write client.key and server.ctx into.")
    ],
    params: Annotated[
        ParamSetName,
        typer.Option(
            help="CKKS parameter set: 'default' (N=8192, 128-bit, ~81 B/param) or "
            "'compact' (N=4096, 192-bit, ~30 B/param, averaging only)."
        ),
    ] = ParamSetName.DEFAULT,
    force: Annotated[
        bool, typer.Option("--force", help="Replace key files already in --out.")
    ] = False,
) -> None:
    """Create a key set: client.key (passphrase-encrypted, 0600) and server.ctx."""
    chosen = get_params(params.value)
    passphrase = new_passphrase()
    keys = provision(out, params=chosen, passphrase=passphrase, overwrite=force)
    rows = [
        ("parameter set", chosen.name),
        ("ring degree N", chosen.poly_modulus_degree),
        ("primes (bits)", list(chosen.coeff_mod_bit_sizes)),
        ("scale", f"2^{chosen.global_scale_bits}"),
        ("security", f"{chosen.security}-bit (HE standard)"),
        ("encryption", "symmetric: clients encrypt with the secret key; "
                       "server.ctx holds no key"),
        ("the server", "adds ciphertexts it cannot read; it can build ciphertexts of "
                       "its own, which clients refuse (secret tags bound to run, round "
                       "and global); it can still drop clients' contributions"),
        ("capacity", f"sum of weights x {CLIP_BOUND:g} (clients clip to +-{CLIP_BOUND:g}) "
                     f"below {chosen.max_abs_sum:.3g}"),
        ("fingerprint", keys.fingerprint),
        ("clients get", f"{keys.client_key_path} (+ the passphrase, separately)"),
        ("server gets", keys.server_context_path),
    ]
    Console().print(label_table("HE keys provisioned", rows))


@app.command("info")
def info(
    file: Annotated[
        Path, typer.Argument(help="A client.key or server.ctx written by `init`.")
    ],
) -> None:
    """Describe a key file (kind, parameter set, fingerprint) without the passphrase."""
    details = key_info(file)
    rows = [(key.replace("_", " "), value) for key, value in details.items()]
    Console().print(label_table(f"{file}", rows))


@app.command("decrypt-model")
def decrypt_model(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished HE run folder (holds model_encrypted.npz).")
    ],
    key: Annotated[Path, typer.Option(help="The key set's client.key.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the model (default RUN_DIR/model.pt).")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="The round the model must sum (default: the run's "
                                      "rounds_completed in summary.json).", min=1)
    ] = None,
    min_contributors: Annotated[
        int, typer.Option(help="Refuse a model summing fewer distinct clients.", min=1)
    ] = 2,
) -> None:
    """Verify and decrypt an HE run's final model into model.pt (needs client.key).

    The model is checked as clients check every global: its tags must verify for the
    run and round it sums, with each contributor counted once; a forged or altered
    model_encrypted.npz is refused.
    """
    import io

    import torch

    from fedsim.client.he_step import ENCRYPTED_MODEL, ENCRYPTED_MODEL_INFO, open_final_model
    from fedsim.privacy.files import atomic_write_bytes

    missing = [n for n in (ENCRYPTED_MODEL, ENCRYPTED_MODEL_INFO) if not (run_dir / n).is_file()]
    if missing:
        raise ConfigError(f"{run_dir} has no {' or '.join(missing)}; give the folder of a "
                          "finished --secure-agg he run")
    if rounds is None:
        rounds = _completed_rounds(run_dir)
    try:
        keys = load_client_keys(key, read_passphrase())
        state, contributors, sum_round = open_final_model(
            run_dir, keys, min_contributors=min_contributors, expected_round=rounds)
    except HEError as err:
        raise ConfigError(f"cannot decrypt {run_dir / ENCRYPTED_MODEL}: {err}") from err
    target = out or run_dir / "model.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(target, buffer.getvalue(), mode=0o600)
    Console().print(f"wrote {target}: verified sum of {len(contributors)} clients' "
                    f"contributions ({', '.join(map(str, contributors))}), round "
                    f"{sum_round}")


def _completed_rounds(run_dir: Path) -> int:
    """The run's rounds_completed from its summary.json, or a one-line error."""
    import json

    try:
        return int(json.loads((run_dir / "summary.json").read_text())["rounds_completed"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{run_dir}/summary.json gives no rounds_completed ({err!r}); "
                          "pass --rounds N (the round the model must sum)") from err
