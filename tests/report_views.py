"""What a person sees of a report, and what a browser would build from it.

Markdown is rendered as the KFP UI's viewer does (CommonMark with GFM tables,
raw HTML passed through), then read as HTML; so assertions are about the text
shown, not about how it had to be escaped to show it.
"""

from __future__ import annotations

import dataclasses
import os
from html.parser import HTMLParser

from markdown_it import MarkdownIt

_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


@dataclasses.dataclass
class Page:
    """An HTML document as a browser reads it: its elements and the text it shows."""

    elements: list[tuple[str, dict[str, str | None]]]  # (tag, attributes), in document order
    texts: list[str]  # the text of each text node, style sheets left out
    tables: list[list[list[str]]]  # each table's rows (header row first), each row's cells' text

    @property
    def text(self) -> str:
        """All the text, as it runs (cells of a row run together)."""
        return "".join(self.texts)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attributes for tag, attributes in self.elements if tag == name]


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.page = Page([], [], [])
        self._in_style = False
        self._cell: list[str] | None = None  # the text of the table cell being read

    def handle_starttag(self, tag, attrs):
        self.page.elements.append((tag, dict(attrs)))
        self._in_style = tag == "style"
        if tag == "table":
            self.page.tables.append([])
        elif tag == "tr":
            self.page.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.page.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self._in_style = False
        if tag in ("td", "th") and self._cell is not None:
            self.page.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if not self._in_style:
            self.page.texts.append(data)
            if self._cell is not None:
                self._cell.append(data)


def read_html(page: str) -> Page:
    reader = _Reader()
    reader.feed(page)
    reader.close()
    return reader.page


def read_markdown(text: str) -> Page:
    return read_html(_MARKDOWN.render(text))


def shown_text(path) -> str:
    """The text a report file shows, by its extension: .md or .html."""
    with open(path, encoding="utf-8") as file:
        content = file.read()
    return (read_markdown if os.fspath(path).endswith(".md") else read_html)(content).text
