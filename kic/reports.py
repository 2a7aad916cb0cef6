"""Every report kic writes (data, evaluation, tuning) as Markdown and as HTML,
and the one rule each format has for text: names are data, never markup.

Class names, file names, hyperparameter values, model URIs and error messages
come from users, so every piece of text a report holds goes through
``markdown_text`` or ``html_text`` on its way out (``plot_text`` for a plot's
labels); no report builds markup by hand. A report is a title and a list of blocks (headings, paragraphs, lists,
tables, pictures); ``render_markdown`` and ``render_html`` walk the same list,
so the two agree, except that pictures only the page can show.

The Markdown goes to the KFP UI, whose viewer passes raw HTML through
(``markdown-to-jsx``), and to any CommonMark/GFM renderer a person opens it
with. The HTML page is self-contained: inline style, pictures as ``data:``
URIs, no scripts, no links, so it shows the same from a bucket, an air-gapped
cluster or the KFP UI.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
from collections.abc import Sequence

# --------------------------------------------------------------------------- the escaping rules

# "&", "<" and ">" become entities, which every renderer shows as the character
# and none reads as a tag, an autolink or another entity ("&amp;" stays text).
# The rest are the characters that open or close an inline construct anywhere
# in a line: emphasis, code, links, strikethrough, math, attribute lists, table
# cells. "(", ")" and "!" are left: they only mean something right after "[" or
# "]", which are always escaped.
_MARKDOWN_ESCAPES = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;",
    **{character: "\\" + character for character in "\\`*_[]{}~|$"},
})
# What starts a block when it starts a line (a heading, a list item, a
# thematic break); the same characters later in a line are plain text.
_BLOCK_START = re.compile(r"^(?:[-+#=]|\d+[.)])")


_WHITESPACE = re.compile(r"\s+")


def markdown_text(value: object) -> str:
    """``value`` as Markdown that shows exactly its text, on one line (a
    newline would end a table row or start a block)."""
    return _WHITESPACE.sub(" ", str(value)).translate(_MARKDOWN_ESCAPES)


def _markdown_line(text: str) -> str:
    """Escaped text that begins a line: a leading "-", "#", "1." would start a block."""
    # The backslash goes before the character that makes the block: \- and 1\.
    return _BLOCK_START.sub(lambda match: match.group(0)[:-1] + "\\" + match.group(0)[-1], text.lstrip())


def html_text(value: object) -> str:
    """``value`` as HTML text, safe in an element and in a quoted attribute."""
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- blocks


@dataclasses.dataclass(frozen=True)
class Strong:
    text: str


@dataclasses.dataclass(frozen=True)
class Code:
    """A name set in code type on the page; plain text in Markdown."""

    text: str


Inline = str | Strong | Code
Line = Inline | Sequence[Inline]


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    content: Line
    note: bool = False  # shown smaller and grey on the page


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: Sequence[Line]


@dataclasses.dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    numeric: Sequence[int] = ()  # columns of numbers, aligned right


@dataclasses.dataclass(frozen=True)
class Picture:
    """An encoded image on the page (not in Markdown)."""

    image: bytes
    alt: str


@dataclasses.dataclass(frozen=True)
class Figure:
    image: bytes  # encoded; a type no browser shows gets a placeholder
    alt: str
    caption: Sequence[str] = ()  # one line each
    title: str = ""  # shown on hover


@dataclasses.dataclass(frozen=True)
class Figures:
    """Captioned images side by side, on the page only; ``size`` is "small" (thumbnails) or "large"."""

    figures: Sequence[Figure]
    size: str = "small"
    heading: str = ""  # a third-level heading above them


@dataclasses.dataclass(frozen=True)
class Box:
    """Blocks framed together on the page: ``style`` is one of ``BOX_STYLES``; Markdown shows the blocks."""

    style: str
    blocks: Sequence[Block]


Block = Heading | Paragraph | Bullets | Table | Picture | Figures | Box
BOX_STYLES = ("passed", "failed")


@dataclasses.dataclass(frozen=True)
class Report:
    title: str
    blocks: Sequence[Block]


# --------------------------------------------------------------------------- Markdown


def render_markdown(report: Report) -> str:
    return "\n\n".join([f"# {markdown_text(report.title)}", *_markdown_blocks(report.blocks)]) + "\n"


def _markdown_blocks(blocks: Sequence[Block]) -> list[str]:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + markdown_text(block.text))
        elif isinstance(block, Paragraph):
            parts.append(_markdown_line(_markdown_inline(block.content)))
        elif isinstance(block, Bullets):
            parts.append("\n".join("- " + _markdown_line(_markdown_inline(item)) for item in block.items))
        elif isinstance(block, Table):
            parts.append(_markdown_table(block))
        elif isinstance(block, Box):
            parts += _markdown_blocks(block.blocks)
    return [part for part in parts if part]


def _markdown_inline(content: Line) -> str:
    pieces = []
    for piece in _pieces(content):
        text = markdown_text(piece.text if isinstance(piece, Strong | Code) else piece)
        pieces.append(f"**{text}**" if isinstance(piece, Strong) and text else text)
    return "".join(pieces)


def _markdown_table(table: Table) -> str:
    def row(cells: Sequence[object]) -> str:
        # An empty cell keeps its place: "|  |".
        return "| " + " | ".join(markdown_text(cell) for cell in cells) + " |"

    alignment = "|" + "".join("---:|" if column in table.numeric else "---|" for column in range(len(table.headers)))
    return "\n".join([row(table.headers), alignment, *[row(cells) for cells in table.rows]])


# --------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { word-break: break-word; max-width: 40em; }
th.number, td.number { text-align: right; }
.note { color: #666; font-size: 0.9em; }
.box { padding: 0.8em 1em; border-radius: 6px; margin: 1em 0; }
.passed { background: #e6f4ea; border: 1px solid #34a853; }
.failed { background: #fce8e6; border: 1px solid #d93025; }
.figures { display: flex; flex-wrap: wrap; gap: 0.75em; margin-bottom: 1em; }
.figures figure { margin: 0; font-size: 0.8em; color: #555; word-break: break-all; }
.small figure { width: 104px; }
.small img { display: block; max-width: 96px; max-height: 96px; border: 1px solid #ccc; }
.large figure { width: 160px; }
.large img { display: block; max-width: 160px; max-height: 160px; }
.missing { width: 160px; height: 100px; background: #eee; display: flex; align-items: center;
           justify-content: center; color: #888; }
"""


def render_html(report: Report) -> str:
    """The report as one self-contained page."""
    title = html_text(report.title)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
            + "\n".join(_html_blocks(report.blocks)) + "\n</body>\n</html>\n")


def _html_blocks(blocks: Sequence[Block]) -> list[str]:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html_text(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            opening = "<p class=\"note\">" if block.note else "<p>"
            parts.append(f"{opening}{_html_inline(block.content)}</p>")
        elif isinstance(block, Bullets) and block.items:
            parts.append("<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        elif isinstance(block, Picture):
            parts.append(f"<p>{_html_image(block.image, block.alt)}</p>")
        elif isinstance(block, Figures):
            if block.heading:
                parts.append(f"<h3>{html_text(block.heading)}</h3>")
            parts.append(f"<div class=\"figures {_choice(block.size, ('small', 'large'))}\">"
                         + "".join(_html_figure(figure) for figure in block.figures) + "</div>")
        elif isinstance(block, Box):
            parts.append(f"<div class=\"box {_choice(block.style, BOX_STYLES)}\">"
                         + "\n".join(_html_blocks(block.blocks)) + "</div>")
    return parts


def _html_inline(content: Line) -> str:
    pieces = []
    for piece in _pieces(content):
        if isinstance(piece, Strong):
            pieces.append(f"<strong>{html_text(piece.text)}</strong>")
        elif isinstance(piece, Code):
            pieces.append(f"<code>{html_text(piece.text)}</code>")
        else:
            pieces.append(html_text(piece))
    return "".join(pieces)


def _html_table(table: Table) -> str:
    def cells(tag: str, values: Sequence[object]) -> str:
        return "".join(f"<{tag} class=\"number\">{html_text(value)}</{tag}>" if column in table.numeric
                       else f"<{tag}>{html_text(value)}</{tag}>" for column, value in enumerate(values))

    rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in table.rows)
    return f"<table><thead><tr>{cells('th', table.headers)}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    title = f" title=\"{html_text(figure.title)}\"" if figure.title else ""
    caption = "<br>".join(html_text(line) for line in figure.caption)
    return f"<figure>{_html_image(figure.image, figure.alt, title)}<figcaption>{caption}</figcaption></figure>"


def _html_image(image: bytes, alt: str, attributes: str = "") -> str:
    mime = image_type(image)
    if mime is None:
        return "<div class=\"missing\">unsupported image format</div>"
    encoded = base64.b64encode(image).decode("ascii")
    return f"<img src=\"data:{mime};base64,{encoded}\" alt=\"{html_text(alt)}\"{attributes}>"


_IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_type(data: bytes) -> str | None:
    """The MIME type of encoded image bytes a browser shows, from their first bytes; None for any other."""
    for signature, mime in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


PLOT_DPI = 80


def plot_text(value: object) -> str:
    """``value`` as matplotlib text: between two "$" it would be TeX (mathtext), which may not even parse."""
    return str(value).replace("$", r"\$")


def png(figure) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes, for a ``Picture``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return buffer.getvalue()


# --------------------------------------------------------------------------- shared


def _pieces(content: Line) -> Sequence[Inline]:
    return [content] if isinstance(content, str | Strong | Code) else content


def _choice(value: str, allowed: Sequence[str]) -> str:
    # Style names become class attributes; only the fixed ones may.
    if value not in allowed:
        raise ValueError(f"unknown style {value!r}: one of {', '.join(allowed)}")
    return value
