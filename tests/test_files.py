import os
import stat

import pytest

from fedsim.privacy.files import LockHeld, atomic_write_bytes, atomic_write_json, lock_file


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path):
    # Prepare
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"v": 1})

    # Execute
    atomic_write_json(path, {"v": 2})

    # Assert
    assert path.read_text() == '{\n  "v": 2\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_atomic_write_mode_is_exact_and_default_follows_umask(tmp_path):
    # Prepare
    old = os.umask(0o077)
    try:
        # Execute
        atomic_write_bytes(tmp_path / "public", b"x", mode=0o644)
        atomic_write_bytes(tmp_path / "plain", b"x")
    finally:
        os.umask(old)

    # Assert
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o600


def test_a_held_lock_is_refused_at_once_naming_its_holder(tmp_path):
    # Prepare
    path = tmp_path / ".lock"
    fd = lock_file(path, wait=False, holder="run 7")
    try:
        # Execute / Assert
        with pytest.raises(LockHeld) as caught:
            lock_file(path, wait=False)
        assert caught.value.holder == "run 7"
    finally:
        os.close(fd)

    os.close(lock_file(path, wait=False))  # released with its descriptor
