"""Where a deployed site keeps its journal: beside its ledgers, never in its data."""

import os
import stat

from fedsim.client.site_journal import site_journal


def test_deployed_site_journal_is_writable_with_read_only_data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(stat.S_IRUSR | stat.S_IXUSR)  # compose mounts a site's data :ro
    monkeypatch.delenv("FEDSIM_PRIVACY_DIR", raising=False)
    try:
        node = {"data-dir": str(data), "privacy-dir": str(tmp_path / "state"),
                "he-key": "k"}
        journal = site_journal(node, None)
        assert journal.path == tmp_path / "state" / "site-journal.jsonl"
        journal.append("contributed", round=1)
        assert [e["round"] for e in journal.find("contributed")] == [1]
        monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
        fallback = site_journal({"data-dir": str(data), "he-key": "k"}, None)
        assert fallback.path == tmp_path / "flwr" / "fedsim-privacy" / "site-journal.jsonl"
        assert not os.listdir(data)
    finally:
        data.chmod(stat.S_IRWXU)
