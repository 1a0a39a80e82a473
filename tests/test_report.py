"""`fedsim report` on run folders from real short simulations.

One real plain run, one real `--dp` run without a budget, and the real `--dp` run
with an epsilon budget that stops clients mid-run (shared with the DP tests).
"""

import base64
import hashlib
import html
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from fedsim.cli.report import report, write_report
from fedsim.config import build_config
from fedsim.reports.compare import accuracy_lines, epsilon_lines, run_labels
from fedsim.reports.load import ReportError, load_run
from fedsim.reports.plots import compare_figure
from fedsim.reports.write import write_compare_report, write_run_report
from fedsim.simulations.runner import simulate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
RUN_HEADINGS = ["What is protected, and from whom",
                "Privacy budget (ε) over the rounds",
                "The 10 clients nearest their budget", "Outcome", "Accuracy and loss",
                "Clients per round", "Traffic per round", "Run configuration"]


def _config(out: Path, **extra):
    return build_config({"clients": 4, "rounds": 2, "fraction": 0.5, "local_epochs": 1,
                         "batch_size": 16, "out": str(out), **extra})


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """A real plain run and a real DP run (made once for the module)."""
    tmp = tmp_path_factory.mktemp("report_sims")
    plain = simulate(_config(tmp / "a", seed=7)).run_dir
    dp = simulate(_config(tmp / "dp_b", seed=8, lr=0.1, dp=True,
                          noise_multiplier=0.8)).run_dir
    return plain, dp


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("data", "model.pt"))
    return dest


@pytest.fixture(scope="module")
def dp_runs(real_runs, budgeted_dp_run, tmp_path_factory):
    """(the budgeted DP run, copied as dp_a; the DP run without a budget, dp_b)."""
    tmp = tmp_path_factory.mktemp("report_dp")
    return _copy(budgeted_dp_run.run_dir, tmp / "dp_a"), real_runs[1]


@pytest.fixture(scope="module")
def dp_report(dp_runs):
    return write_run_report(dp_runs[0])


def _ledger_lines(run_dir: Path) -> list[dict]:
    text = (run_dir / "privacy" / "ledger.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _exhausted_round(records: list[dict]) -> int | None:
    """The round of a client's zero-step, unreleased marker: it was refused there."""
    for rec in records:
        if rec["steps"] == 0 and not rec["released"]:
            return rec["round"]
        if rec["budget"] is not None and rec["epsilon"] >= rec["budget"]:
            return rec["round"]
    return None


class _Page(HTMLParser):
    """Headings and <img> sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self._tag = [], [], None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._tag in ("h1", "h2") and data.strip():
            self.headings.append(data.strip())

    def handle_endtag(self, tag):
        self._tag = None


def _page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed here and could not be: .ci/run installs "
                    "Debian's chromium (apt-get install chromium) before the tests")
    profile = f"--user-data-dir={tmp / 'chromium-profile'}"
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, profile, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


# -- privacy.json -------------------------------------------------------------
@pytest.mark.parametrize("which", [0, 1])
def test_privacy_json_numbers_are_the_ledgers(dp_runs, dp_report, which):
    written = dp_report if which == 0 else write_run_report(dp_runs[1])
    ledger = _ledger_lines(dp_runs[which])
    privacy = json.loads(written.privacy.read_text())
    by_client: dict[int, list[dict]] = {}
    for rec in ledger:
        by_client.setdefault(rec["client_id"], []).append(rec)
    assert privacy["dp"] and privacy["finished"]
    assert privacy["ledger_records"] == len(ledger)
    assert set(privacy["clients"]) == {str(c) for c in by_client}
    fields = ("round", "epsilon", "steps", "noise_multiplier", "sample_rate",
              "released", "outcome")
    for cid, records in by_client.items():
        trained = [r for r in records if r["steps"] > 0]
        entry, last = privacy["clients"][str(cid)], (trained or records)[-1]
        assert entry["epsilon_by_round"] == [
            {**{k: r[k] for k in fields}, "aggregated": r["outcome"] == "aggregated"}
            for r in records]
        assert entry["final_epsilon"] == records[-1]["epsilon"] == last["epsilon"]
        for key in ("delta", "accountant", "noise_multiplier", "sample_rate", "budget"):
            assert entry[key] == last[key], key
        assert entry["steps"] == sum(r["steps"] for r in records)
        assert entry["participations"] == len(trained)
        assert entry["released_updates"] == sum(r["released"] for r in records)
        assert entry["exhausted_round"] == _exhausted_round(records)
        assert entry["exhausted"] == (_exhausted_round(records) is not None)
    exhausted = sorted(c for c, recs in by_client.items() if _exhausted_round(recs))
    assert privacy["exhausted_clients"] == exhausted
    assert bool(exhausted) == (which == 0)  # only dp_a has a budget it runs out of
    top = max(ledger, key=lambda r: r["epsilon"])
    assert privacy["max_final_epsilon"]["epsilon"] == top["epsilon"]
    assert privacy["delta"] == ledger[0]["delta"] and privacy["accountant"] == "rdp"


# -- HTML and Markdown ----------------------------------------------------------
def test_html_is_one_self_contained_file(dp_report):
    text = dp_report.html.read_text()
    for banned in ("<script", "<link", "http://", "https://", "@import", "url("):
        assert banned not in text, banned
    page = _page(text)
    assert page.headings[1:] == RUN_HEADINGS
    assert len(page.images) == 5
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


def test_html_renders_in_headless_chromium(dp_report, tmp_path):
    url = dp_report.html.resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    page = _page(dom)
    assert page.headings[0].startswith("Privacy and results report")
    assert page.headings[1:] == RUN_HEADINGS
    assert len(page.images) == 5
    for src in page.images:
        image = _png(base64.b64decode(src.split(",", 1)[1]))
        assert image.width > 0 and image.height > 0
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", url)
    image = _png(shot.read_bytes()).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    white = dict((c, n) for n, c in colors).get((255, 255, 255), 0)
    assert len(colors) > 50, "screenshot looks blank"
    assert white < 0.97 * image.width * image.height


def test_markdown_has_the_same_sections_and_png_files(dp_report):
    text = dp_report.markdown.read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == RUN_HEADINGS
    links = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines()
             if line.startswith("![")]
    assert len(links) == 5
    for link in links:
        assert link.startswith("report_files/")
        assert _png((dp_report.markdown.parent / link).read_bytes()).width > 0


def test_statement_quotes_the_ledger(dp_runs, dp_report):
    text = html.unescape(dp_report.html.read_text())
    top = max(_ledger_lines(dp_runs[0]), key=lambda r: r["epsilon"])
    assert f"ε = {top['epsilon']:.4g} for the most exposed client" in text
    assert "sample-level differential privacy" in text
    assert "not client-level DP" in text
    assert "secure aggregation was off" in text
    assert "privacy/ledger.jsonl, the server's record" in text  # which ledger


def test_not_protected_lists_every_release_outside_dp(dp_report):
    from fedsim.privacy.releases import OFF_UNDER_DP, RELEASES

    text = " ".join(dp_report.markdown.read_text().split())
    not_protected = text[text.index("Not protected:"):]
    for release in RELEASES:
        assert f"Released outside DP, {release.name}: {release.what}" in not_protected
    assert "Not sent under DP at all: " + "; ".join(OFF_UNDER_DP) in not_protected
    assert "no DP against the server" not in text  # secret noise


def test_plain_run_says_dp_was_off(real_runs, tmp_path):
    written = write_run_report(_copy(real_runs[0], tmp_path / "plain"))
    text = written.html.read_text()
    assert text.count("DP was off in this run") == 2
    assert "Nothing beyond ordinary access control" in text
    assert "Released outside DP" not in text
    privacy = json.loads(written.privacy.read_text())
    assert privacy["dp"] is False and privacy["clients"] == {}
    assert len(_page(text).images) == 3


# -- damaged run folders ----------------------------------------------------------
def _cli(*args: str):
    app = typer.Typer()
    app.command()(report)
    return CliRunner().invoke(app, list(args))


def test_interrupted_run_is_reported_as_such(dp_runs, tmp_path):
    run = _copy(dp_runs[0], tmp_path / "killed")
    (run / "summary.json").unlink()
    ledger = run / "privacy" / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    result = _cli(str(run))
    assert result.exit_code == 0, result.output
    assert "the run did not finish (no readable summary.json)" in result.output
    assert "skipped a truncated last line (line" in result.output
    text = (run / "report.html").read_text()
    assert "the run did not finish" in text and "truncated last line" in text
    privacy = json.loads((run / "privacy.json").read_text())
    assert privacy["finished"] is False
    assert privacy["ledger_records"] == len(lines) - 1


def test_missing_metrics_still_gives_a_report(dp_runs, tmp_path, capsys):
    run = _copy(dp_runs[0], tmp_path / "old_layout")
    (run / "metrics.jsonl").unlink()
    html = write_report(run)
    err = capsys.readouterr().err
    assert "metrics.jsonl is missing in" in err
    text = html.read_text()
    assert "metrics.jsonl is missing in" in text
    assert "No round metrics to plot" in text
    assert 'alt="Cumulative ε after each round' in text
    assert json.loads((run / "privacy.json").read_text())["clients"]


def test_he_run_states_what_he_protects(real_runs, tmp_path):
    run = _copy(real_runs[0], tmp_path / "he")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"secure_agg": "he",
                                                          "he_params": "compact"}))
    rows = [json.loads(line) | {"central_accuracy": None, "central_loss": None}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "he").mkdir()
    (run / "he" / "server.ctx").write_bytes(b"public context bytes")
    text = html.unescape(write_run_report(run).html.read_text())
    assert "homomorphic encryption, TenSEAL CKKS, parameter set 'compact'" in text
    assert hashlib.sha256(b"public context bytes").hexdigest() in text
    assert "colluding with the key holder" in text
    assert "under HE the server cannot read the model" in text
    assert "ciphertext bytes" in text


def test_cli_refuses_what_is_not_a_run(tmp_path, real_runs):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([str(tmp_path / "nope")], "does not exist"),
             ([str(empty)], "is not a fedsim run folder"),
             (["--compare", str(real_runs[0]), str(real_runs[1])], "--out"),
             (["--compare", str(real_runs[0]), "--out", str(tmp_path)],
              "two run folders")]
    for args, message in cases:
        result = _cli(*args)
        assert isinstance(result.exception, ReportError), args
        assert message in str(result.exception)
        assert "\n" not in str(result.exception)


# -- comparison -------------------------------------------------------------------
def test_compare_puts_both_runs_on_one_plot(dp_runs, tmp_path):
    written = write_compare_report(list(dp_runs), tmp_path / "cmp")
    runs = [load_run(r) for r in dp_runs]
    labels = run_labels(runs)
    lines, off, unknown = epsilon_lines(runs, labels)
    assert [s.label for s in lines] == labels == ["dp_a", "dp_b"] and not off + unknown
    for series in (lines, accuracy_lines(runs, labels)):
        ax = compare_figure(series, ylabel="y", title="t").axes[0]
        assert ax.get_legend_handles_labels()[1] == labels
    assert written.html.name == "compare.html" and written.markdown.name == "compare.md"
    page = _page(written.html.read_text())
    assert page.headings[1:] == ["Runs", "Accuracy per round",
                                 "Privacy spent per round (max ε over clients)"]
    assert len(page.images) == 2
    files = sorted(p.name for p in (tmp_path / "cmp" / "compare_files").iterdir())
    assert files == ["compare_accuracy.png", "compare_epsilon.png"]


def test_compare_names_runs_without_dp(dp_runs, real_runs, tmp_path):
    written = write_compare_report([dp_runs[0], real_runs[0]], tmp_path / "cmp")
    text = written.html.read_text()
    assert f"DP was off in: {real_runs[0].name}." in text
    assert len(_page(text).images) == 2


def test_exhaustion_marker_is_not_a_participation():
    from fedsim.privacy.ledger import LedgerRecord
    from fedsim.reports.privacy import ClientPrivacy

    def rec(rnd, steps, noise, released=True):
        return LedgerRecord(round=rnd, client_id=0, noise_multiplier=noise, sample_rate=0.1,
                            steps=steps, delta=1e-5, accountant="rdp", epsilon=2.5,
                            budget=3.0, released=released)

    client = ClientPrivacy(client_id=0, records=(rec(1, 10, 1.2), rec(2, 0, 0.0, False)))
    assert client.participations == 1
    assert client.last.noise_multiplier == 1.2
    assert client.exhausted_round == 2


def _ledger_record(rnd, client, *, noise, delta, steps=10, epsilon=1.0, budget=None,
                   released=True):
    from fedsim.privacy.ledger import LedgerRecord

    return LedgerRecord(round=rnd, client_id=client, noise_multiplier=noise,
                        sample_rate=0.1, steps=steps, delta=delta, accountant="rdp",
                        epsilon=epsilon, budget=budget, released=released)


def test_compare_takes_noise_and_delta_from_the_ledger():
    from types import SimpleNamespace

    from fedsim.reports.compare import ledger_setting

    calibrated = SimpleNamespace(  # --target-epsilon, default delta: the config has neither
        config={"dp": True, "noise_multiplier": None, "delta": None},
        ledger=(_ledger_record(1, 0, noise=1.1, delta=7.5e-6),
                _ledger_record(1, 1, noise=0.9, delta=8e-6),
                _ledger_record(2, 1, noise=0.0, delta=8e-6, steps=0, released=False)))
    assert ledger_setting(calibrated, "noise_multiplier") == "0.9 to 1.1 (per client)"
    assert ledger_setting(calibrated, "delta") == "7.5e-06 to 8e-06 (per client)"
    fixed = SimpleNamespace(config={"noise_multiplier": 1.0},
                            ledger=(_ledger_record(1, 0, noise=1.0, delta=1e-5),))
    assert ledger_setting(fixed, "noise_multiplier") == "1"
    assert ledger_setting(SimpleNamespace(config={"delta": None}, ledger=()), "delta") == "—"


def test_exhausted_column_says_why_a_client_has_no_round():
    from fedsim.reports.content import _exhausted_cell
    from fedsim.reports.privacy import ClientPrivacy

    near = ClientPrivacy(client_id=0, records=(
        _ledger_record(1, 0, noise=1.0, delta=1e-5, epsilon=2.954, budget=3.0),))
    refused = ClientPrivacy(client_id=1, records=(
        _ledger_record(1, 1, noise=1.0, delta=1e-5, epsilon=2.9, budget=3.0),
        _ledger_record(3, 1, noise=0.0, delta=1e-5, steps=0, epsilon=2.9, budget=3.0,
                       released=False)))
    unbudgeted = ClientPrivacy(client_id=2, records=(
        _ledger_record(1, 2, noise=1.0, delta=1e-5),))
    assert _exhausted_cell(near) == "not refused"
    assert _exhausted_cell(refused) == "3"
    assert _exhausted_cell(unbudgeted) == "—"


def test_clients_plot_does_not_hide_lines_at_zero():
    from types import SimpleNamespace

    from fedsim.reports import plots
    from fedsim.reports.content import participation_section

    rows = [{"round": r, "clients_sampled": 3, "clients_replied": 3 - (r == 4),
             "rejected": 0, "failed": int(r == 4)} for r in range(1, 41)]
    section = participation_section(SimpleNamespace(metrics=rows, dp_on=False), [])
    caption = section.blocks[0].caption
    assert "0 in every round (not drawn): rejected" in caption
    fig = plots.count_bars([r["round"] for r in rows],
                           {"a": [0] * 40, "b": [0] * 40}, "t")
    styles = [(line.get_linestyle(), line.get_linewidth()) for line in fig.axes[0].lines]
    assert len(set(styles)) == 2, "coinciding step lines must look different"
