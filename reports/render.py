"""A tiny document model and its two renderings: self-contained HTML and Markdown.

The report is built once as a `Document` of sections and blocks; HTML and Markdown
are two views of the same content, so they cannot disagree. The HTML embeds its
figures as base64 PNG and its CSS inline: it opens offline, with no external
script, font, stylesheet or link. The Markdown refers to PNG files next to it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #1b1f24;
  line-height: 1.5; background: #ffffff; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .9rem; }
.notice { background: #fff8c5; border: 1px solid #d4a72c; padding: .5rem .8rem;
  margin: .5rem 0; border-radius: 4px; }
.subtitle { color: #57606a; }
"""


@dataclass(frozen=True, kw_only=True)
class Paragraph:
    """Plain text."""

    text: str


@dataclass(frozen=True, kw_only=True)
class Bullets:
    """An unordered list of plain-text items."""

    items: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Table:
    """A table of plain-text cells; `numeric` columns are right-aligned in HTML."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Image:
    """A PNG figure; `name` becomes the file name in the Markdown rendering."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True, kw_only=True)
class Notice:
    """A highlighted warning (a run that did not finish, a missing file, ...)."""

    text: str


Block = Paragraph | Bullets | Table | Image | Notice


@dataclass(frozen=True, kw_only=True)
class Section:
    """A titled part of the report."""

    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True, kw_only=True)
class Document:
    """A whole report: title, subtitle, warnings on top, then the sections."""

    title: str
    subtitle: str
    warnings: tuple[str, ...]
    sections: tuple[Section, ...]


# -- HTML ---------------------------------------------------------------------
def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if i in table.numeric
            else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    rows = "".join(body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_block(block: Block) -> str:
    """One block as HTML."""
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{html.escape(i)}</li>" for i in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Notice):
        return f'<div class="notice" role="note">{html.escape(block.text)}</div>'
    data = base64.b64encode(block.png).decode("ascii")
    caption = html.escape(block.caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def render_html(doc: Document) -> str:
    """Render the document as one self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        f'<p class="subtitle">{html.escape(doc.subtitle)}</p>',
        *(_html_block(Notice(text=w)) for w in doc.warnings),
    ]
    for section in doc.sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts.extend(_html_block(b) for b in section.blocks)
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- Markdown -----------------------------------------------------------------
_MD_SPECIAL = "\\`*_[]<>|#"


def md_escape(text: str) -> str:
    """Escape Markdown's special characters so text shows as written."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def _md_table(table: Table) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(md_escape(c) for c in cells) + " |"

    rule = "|" + "|".join("---:" if i in table.numeric else "---"
                          for i in range(len(table.headers))) + "|"
    return "\n".join([line(table.headers), rule, *(line(r) for r in table.rows)])


def _md_block(block: Block, files_dir: str) -> str:
    """One block as Markdown (images refer to `files_dir/<name>.png`)."""
    if isinstance(block, Paragraph):
        return md_escape(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {md_escape(i)}" for i in block.items)
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Notice):
        return f"> **Warning:** {md_escape(block.text)}"
    caption = md_escape(block.caption)
    return f"![{caption}]({files_dir}/{block.name}.png)\n\n*{caption}*"


def render_markdown(doc: Document, files_dir: str) -> tuple[str, dict[str, bytes]]:
    """Render Markdown, plus the PNG files (by file name) it refers to."""
    parts = [f"# {md_escape(doc.title)}", md_escape(doc.subtitle)]
    parts.extend(_md_block(Notice(text=w), files_dir) for w in doc.warnings)
    files: dict[str, bytes] = {}
    for section in doc.sections:
        parts.append(f"## {md_escape(section.title)}")
        for block in section.blocks:
            parts.append(_md_block(block, files_dir))
            if isinstance(block, Image):
                files[f"{block.name}.png"] = block.png
    return "\n\n".join(parts) + "\n", files
