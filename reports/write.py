"""Write reports to disk: report.html, report.md (+ PNGs), privacy.json; compare.*.

Every file goes through the atomic writers of `fedsim.privacy.files`, so a reader never sees a
half-written report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsim.privacy.files import atomic_write_bytes, atomic_write_json
from fedsim.reports.compare import compare_document
from fedsim.reports.content import run_document
from fedsim.reports.load import ReportError, load_run
from fedsim.reports.privacy import privacy_json
from fedsim.reports.render import Document, render_html, render_markdown


@dataclass(frozen=True, kw_only=True)
class WrittenReport:
    """The files a report call wrote, and the warning lines to show the user."""

    html: Path
    markdown: Path
    privacy: Path | None
    warnings: tuple[str, ...]


def _write_images(files_dir: Path, files: dict[str, bytes]) -> None:
    """Write the Markdown's PNGs; drop PNGs a previous report left that are unused."""
    for name, data in files.items():
        atomic_write_bytes(files_dir / name, data)
    if files_dir.is_dir():
        for stale in files_dir.glob("*.png"):
            if stale.name not in files:
                stale.unlink(missing_ok=True)


def write_document(doc: Document, out: Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.html` and `<stem>.md` (+ `<stem>_files/`) into `out`."""
    files_dir = f"{stem}_files"
    markdown, files = render_markdown(doc, files_dir)
    _write_images(out / files_dir, files)
    md_path, html_path = out / f"{stem}.md", out / f"{stem}.html"
    atomic_write_bytes(md_path, markdown.encode("utf-8"))
    atomic_write_bytes(html_path, render_html(doc).encode("utf-8"))
    return html_path, md_path


def write_run_report(run_dir: Path, out: Path | None = None) -> WrittenReport:
    """Report one run folder into `out` (default: the run folder itself)."""
    run = load_run(Path(run_dir))
    target = Path(out) if out is not None else run.run_dir
    privacy_path = target / "privacy.json"
    atomic_write_json(privacy_path, privacy_json(run))
    html_path, md_path = write_document(run_document(run), target, "report")
    return WrittenReport(html=html_path, markdown=md_path, privacy=privacy_path,
                         warnings=run.warnings)


def write_compare_report(run_dirs: Sequence[Path], out: Path) -> WrittenReport:
    """Compare several run folders; write compare.html and compare.md into `out`."""
    if len(run_dirs) < 2:
        raise ReportError("--compare needs at least two run folders, "
                          f"got {len(run_dirs)}")
    runs = [load_run(Path(d)) for d in run_dirs]
    doc = compare_document(runs)
    html_path, md_path = write_document(doc, Path(out), "compare")
    return WrittenReport(html=html_path, markdown=md_path, privacy=None,
                         warnings=doc.warnings)
