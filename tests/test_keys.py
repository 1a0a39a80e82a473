"""HE key provisioning: encrypted client key, public server context, the CLI."""

import json
import stat

import numpy as np
import pytest
import tenseal as ts
from typer.testing import CliRunner

from fedsim.cli.keys import app
from fedsim.privacy import he, keys

PASS = "correct horse battery staple"
COMPACT = he.PARAMETER_SETS["compact"]


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    return keys.provision(out, params=COMPACT, passphrase=PASS)


def rewrite_header(path, target, **changes):
    """Copy a key file to `target` with some header fields changed."""
    parsed = keys.unpack(path.read_bytes(), source=str(path))
    target.write_bytes(keys.pack(parsed.header | changes, parsed.payload))
    return target


def test_client_key_is_private_to_its_owner(provisioned):
    mode = stat.S_IMODE(provisioned.client_key_path.stat().st_mode)
    assert mode == 0o600
    assert mode & (stat.S_IRWXG | stat.S_IRWXO) == 0


def test_server_file_holds_no_secret_key(provisioned):
    # Prepare
    raw = provisioned.server_context_path.read_bytes()
    payload = keys.unpack(raw, source="server.ctx").payload
    # Execute
    loaded, params = keys.load_server_context(provisioned.server_context_path)
    # Assert
    assert not ts.context_from(payload).is_private()
    assert not loaded.is_private()
    assert params == COMPACT
    assert keys.key_info(provisioned.server_context_path)["secret_key"] is False


def test_client_key_round_trip_aggregates_with_server_context(provisioned):
    # Prepare
    client = keys.load_client_context(
        provisioned.client_key_path, PASS, expect_fingerprint=provisioned.fingerprint
    )
    server, params = keys.load_server_context(
        provisioned.server_context_path, expect_fingerprint=provisioned.fingerprint
    )
    update = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    fp = provisioned.fingerprint
    # Execute
    blobs = he.encrypt_update(client, update, 4.0, fingerprint=fp)
    vectors = he.load_ciphertexts(server, blobs, expected_count=1, fingerprint=fp)
    out = he.decrypt_average(
        client, he.serialize_vectors(vectors, fingerprint=fp), shapes=[(2, 3)],
        total_weight=4.0, fingerprint=fp,
    )
    # Assert
    assert client.is_private() and he.is_symmetric(client) and he.is_symmetric(server)
    assert np.max(np.abs(out[0] - update[0])) <= 1e-5


def test_server_context_can_neither_encrypt_nor_decrypt(provisioned):
    server, _ = keys.load_server_context(provisioned.server_context_path)
    with pytest.raises(ValueError, match="doesn't support encryption"):
        ts.ckks_vector(server, [1.0, 2.0])
    client = keys.load_client_context(provisioned.client_key_path, PASS)
    blobs = he.encrypt_update(client, [np.ones(4)], 1.0, fingerprint=provisioned.fingerprint)
    vector = he.load_ciphertexts(server, blobs, expected_count=1,
                                 fingerprint=provisioned.fingerprint)[0]
    with pytest.raises(ValueError, match="secret_key"):
        vector.decrypt()


def test_two_key_sets_have_different_fingerprints(provisioned, tmp_path):
    other = keys.provision(tmp_path, params=COMPACT, passphrase=PASS)
    assert other.fingerprint != provisioned.fingerprint
    mine = keys.load_client_context(provisioned.client_key_path, PASS)
    theirs, _ = keys.load_server_context(other.server_context_path)
    blobs = he.encrypt_update(mine, [np.ones(4)], 1.0, fingerprint=provisioned.fingerprint)
    with pytest.raises(he.CiphertextError, match="another key set"):
        he.load_ciphertexts(theirs, blobs, expected_count=1, fingerprint=other.fingerprint)


def test_wrong_passphrase_fails(provisioned):
    with pytest.raises(keys.KeyFileError, match="wrong passphrase or corrupted key"):
        keys.load_client_context(provisioned.client_key_path, "not the passphrase")


def test_edited_header_breaks_authentication(provisioned, tmp_path):
    params = keys.key_info(provisioned.client_key_path)
    assert params["params"] == "compact"
    parsed = keys.unpack(provisioned.client_key_path.read_bytes(), source="k")
    renamed = parsed.header["params"] | {"name": "default"}
    forged = rewrite_header(
        provisioned.client_key_path, tmp_path / "client.key", params=renamed
    )
    with pytest.raises(keys.KeyFileError, match="wrong passphrase or corrupted key"):
        keys.load_client_context(forged, PASS)


def test_flipped_payload_byte_is_detected(provisioned, tmp_path):
    data = bytearray(provisioned.client_key_path.read_bytes())
    data[-100] ^= 0x01
    (tmp_path / "client.key").write_bytes(bytes(data))
    with pytest.raises(keys.KeyFileError, match="wrong passphrase or corrupted key"):
        keys.load_client_context(tmp_path / "client.key", PASS)


def test_fingerprint_mismatch_names_both(provisioned):
    other = "ab" * 32
    for load in (
        lambda: keys.load_client_context(
            provisioned.client_key_path, PASS, expect_fingerprint=other
        ),
        lambda: keys.load_server_context(
            provisioned.server_context_path, expect_fingerprint=other
        ),
    ):
        with pytest.raises(keys.KeyFileError) as info:
            load()
        assert provisioned.fingerprint in str(info.value) and other in str(info.value)


def test_server_file_with_a_secret_key_is_refused(provisioned, tmp_path):
    # Prepare: a server.ctx whose payload (and matching hash) holds a secret key
    secret = he.secret_context_bytes(he.create_context(COMPACT))
    header = {
        "format": keys.FORMAT_VERSION,
        "kind": keys.SERVER_KIND,
        "params": {
            "name": "compact",
            "poly_modulus_degree": 4096,
            "coeff_mod_bit_sizes": [56, 19],
            "global_scale_bits": 33,
        },
        "key_id": "00" * 16,
        "fingerprint": he.fingerprint(secret, bytes(16)),
    }
    bad = tmp_path / "server.ctx"
    bad.write_bytes(keys.pack(header, secret))
    # Execute / Assert
    with pytest.raises(keys.KeyFileError, match="secret key"):
        keys.load_server_context(bad)
    assert keys.key_info(bad)["secret_key"] is True


def test_kinds_cannot_be_swapped(provisioned):
    with pytest.raises(keys.KeyFileError, match="expected a server-public-context"):
        keys.load_server_context(provisioned.client_key_path)
    with pytest.raises(keys.KeyFileError, match="expected a client-secret-context"):
        keys.load_client_context(provisioned.server_context_path, PASS)


def test_corrupted_server_file_is_detected(provisioned, tmp_path):
    data = bytearray(provisioned.server_context_path.read_bytes())
    data[-50] ^= 0x01
    (tmp_path / "server.ctx").write_bytes(bytes(data))
    with pytest.raises(keys.KeyFileError, match="corrupted"):
        keys.load_server_context(tmp_path / "server.ctx")


def test_not_a_key_file(tmp_path):
    (tmp_path / "x").write_bytes(b"hello")
    with pytest.raises(keys.KeyFileError, match="not a fedsim HE key file"):
        keys.key_info(tmp_path / "x")
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.load_server_context(tmp_path / "missing")


def test_key_info_needs_no_passphrase(provisioned):
    info = keys.key_info(provisioned.client_key_path)
    assert info["kind"] == keys.CLIENT_KIND
    assert info["params"] == "compact"
    assert info["fingerprint"] == provisioned.fingerprint
    assert info["secret_key"] is True and info["encrypted"] is True


def test_existing_keys_are_not_overwritten(provisioned):
    out = provisioned.client_key_path.parent
    with pytest.raises(keys.KeyFileError, match="--force"):
        keys.provision(out, params=COMPACT, passphrase=PASS)


def test_empty_passphrase_is_refused(tmp_path):
    with pytest.raises(keys.PassphraseError, match="empty"):
        keys.provision(tmp_path, params=COMPACT, passphrase="")


def test_forged_kdf_cost_is_refused(provisioned, tmp_path):
    parsed = keys.unpack(provisioned.client_key_path.read_bytes(), source="k")
    kdf = parsed.header["kdf"] | {"log2_n": 40}
    forged = rewrite_header(provisioned.client_key_path, tmp_path / "k", kdf=kdf)
    with pytest.raises(keys.KeyFileError, match="scrypt parameters"):
        keys.load_client_context(forged, PASS)


def test_header_is_small_json(provisioned):
    raw = provisioned.client_key_path.read_bytes()
    header = keys.unpack(raw, source="k").header
    assert json.loads(json.dumps(header)) == header
    assert header["kdf"]["name"] == "scrypt" and header["cipher"] == "AES-256-GCM"
    assert len(bytes.fromhex(header["salt"])) == 16
    assert len(bytes.fromhex(header["nonce"])) == 12


# --- passphrase source -----------------------------------------------------------


def test_passphrase_from_environment(monkeypatch):
    monkeypatch.setenv("FEDSIM_HE_PASSPHRASE", "s3cret")
    assert keys.read_passphrase() == "s3cret"


def test_empty_environment_passphrase_is_refused(monkeypatch):
    monkeypatch.setenv("FEDSIM_HE_PASSPHRASE", "")
    with pytest.raises(keys.PassphraseError, match="set but empty"):
        keys.read_passphrase()


def test_prompt_confirms_on_init(monkeypatch):
    monkeypatch.delenv("FEDSIM_HE_PASSPHRASE", raising=False)
    answers = iter(["one", "two"])
    with pytest.raises(keys.PassphraseError, match="differ"):
        keys.read_passphrase(confirm=True, ask=lambda _: next(answers))
    answers = iter(["same", "same"])
    assert keys.read_passphrase(confirm=True, ask=lambda _: next(answers)) == "same"


def test_prompt_refuses_empty_and_no_prompt_needs_env(monkeypatch):
    monkeypatch.delenv("FEDSIM_HE_PASSPHRASE", raising=False)
    with pytest.raises(keys.PassphraseError, match="empty"):
        keys.read_passphrase(ask=lambda _: "")
    with pytest.raises(keys.PassphraseError, match="FEDSIM_HE_PASSPHRASE"):
        keys.read_passphrase(prompt=False)


# --- CLI -------------------------------------------------------------------------


def test_cli_init_and_info(tmp_path):
    # Prepare
    runner = CliRunner()
    env = {"FEDSIM_HE_PASSPHRASE": PASS, "COLUMNS": "200"}
    # Execute
    init = runner.invoke(
        app, ["init", "--out", str(tmp_path), "--params", "compact"], env=env
    )
    info = runner.invoke(app, ["info", str(tmp_path / "server.ctx")], env=env)
    # Assert
    assert init.exit_code == 0, init.output
    fp = keys.key_info(tmp_path / "client.key")["fingerprint"]
    assert fp in init.output and "192-bit" in init.output
    assert info.exit_code == 0, info.output
    assert keys.SERVER_KIND in info.output and fp in info.output


def test_cli_has_no_passphrase_flag(tmp_path):
    result = CliRunner().invoke(
        app, ["init", "--out", str(tmp_path), "--passphrase", "x"]
    )
    assert result.exit_code != 0
    assert not (tmp_path / "client.key").exists()


def test_cli_refuses_unknown_parameter_set(tmp_path):
    env = {"FEDSIM_HE_PASSPHRASE": PASS}
    result = CliRunner().invoke(
        app, ["init", "--out", str(tmp_path), "--params", "huge"], env=env
    )
    assert result.exit_code == 2


def test_custom_parameter_set_round_trips(tmp_path):
    custom = he.HEParams(
        name="lab",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(50, 25),
        global_scale_bits=30,
    )
    made = keys.provision(tmp_path, params=custom, passphrase=PASS)
    _, params = keys.load_server_context(made.server_context_path)
    assert params == custom


def test_server_header_claiming_other_parameters_is_refused(provisioned, tmp_path):
    parsed = keys.unpack(provisioned.server_context_path.read_bytes(), source="s")
    claimed = parsed.header["params"] | {"global_scale_bits": 40}
    forged = rewrite_header(
        provisioned.server_context_path, tmp_path / "server.ctx", params=claimed
    )
    with pytest.raises(keys.KeyFileError, match="context differs"):
        keys.load_server_context(forged)


# --- a new key set's passphrase (fedsim keys init) ---------------------------------


def _keys_init(monkeypatch, capsys, tmp_path, env_value):
    import io
    import sys

    from fedsim.cli.main import main

    if env_value is None:
        monkeypatch.delenv("FEDSIM_HE_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("FEDSIM_HE_PASSPHRASE", env_value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal, as under cron/CI
    monkeypatch.setattr(sys, "argv", ["fedsim", "keys", "init", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_init_without_terminal_names_the_variable(monkeypatch, capsys, tmp_path):
    code, err = _keys_init(monkeypatch, capsys, tmp_path, None)
    assert code == 2 and "aborted" not in err
    assert "set FEDSIM_HE_PASSPHRASE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "client.key").exists()


@pytest.mark.parametrize(("weak", "needle"), [("abc", "has 3 characters; use at least 12"),
                                              ("aaaaaabbbbbb", "only 2 different")])
def test_init_refuses_a_weak_passphrase(monkeypatch, capsys, tmp_path, weak, needle):
    code, err = _keys_init(monkeypatch, capsys, tmp_path, weak)
    assert code == 2 and needle in err
    assert not (tmp_path / "client.key").exists()


def test_a_weak_passphrase_still_opens_an_existing_key(tmp_path):
    """Strength is asked of new key sets only: older key files keep opening."""
    made = keys.provision(tmp_path, params=he.get_params("compact"), passphrase="abc")
    keys.load_client_context(made.client_key_path, "abc")
