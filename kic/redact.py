"""Secrets out of every message kic shows or logs.

Credentials reach kic in a URL's userinfo (``https://user:pw@host``), in
``--token``, ``--token-file`` and ``--cookies``, and come back inside
libraries' exceptions (an ``Authorization`` header echoed in a request's
repr, a URL in a connection error). ``redact`` blanks them by form, and
blanks anywhere the exact values the command was given (``remember``), for a
secret that turns up in a form no pattern knows. Messages are redacted where
they are built, and the CLI redacts everything a credentialed command prints
as a last line of defence.
"""

from __future__ import annotations

import io
import re
from typing import TextIO

HIDDEN = "***"
_MIN_REMEMBERED = 4  # shorter values would blank ordinary words

_known: set[str] = set()

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")
_SEPARATOR = r"(?P<separator>['\"]?\s*[:=]\s*['\"]?)"
_AUTHORIZATION = re.compile(r"(?i)\b(?P<name>(?:proxy-)?authorization)" + _SEPARATOR
                            + r"(?:(?P<scheme>[A-Za-z]+)\s+)?(?P<value>[^\s'\",;})]+)")
_COOKIE = re.compile(r"(?i)\b(?P<name>set-cookie|cookies?)" + _SEPARATOR + r"(?P<value>[^'\"\r\n})]+)")
# Not "bearer token": a word of lower-case letters is prose.
_SCHEME_TOKEN = re.compile(r"\b(?P<scheme>[Bb]earer|[Bb]asic)\s+(?![a-z]+\b)(?P<value>[A-Za-z0-9._~+/=-]{4,})")
_NAMED = re.compile(r"(?i)\b(?P<name>(?:access[_-]?|id[_-]?|refresh[_-]?)?token|password|passwd|secret|"
                    r"api[_-]?key|x-api-key|private-token|client[_-]?secret)" + _SEPARATOR
                    + r"(?P<value>[^\s'\",;}&)]+)")


def remember(*secrets: str, urls: tuple[str, ...] = ()) -> None:
    """Values to blank wherever they appear from now on: whole ``secrets`` (a token, a cookie header) and
    each cookie's value in them, and the userinfo of ``urls`` (not the rest of the URL, which is no secret)."""
    found = []
    for secret in secrets:
        secret = (secret or "").strip()
        found.append(secret)
        found += [cookie.partition("=")[2].strip() for cookie in secret.split(";") if "=" in cookie]
    for url in urls:
        if match := _USERINFO.search(url or ""):
            found.append(match["userinfo"].partition(":")[2] or match["userinfo"])
    _known.update(value for value in found if len(value) >= _MIN_REMEMBERED)


def forget() -> None:
    _known.clear()


def redact(text: str) -> str:
    """``text`` with every secret kic knows of, or recognises by form, replaced by ***."""
    if not text:
        return text
    text = _USERINFO.sub(_without_password, text)
    text = _AUTHORIZATION.sub(lambda match: f"{match['name']}{match['separator']}"
                              + (f"{match['scheme']} " if match["scheme"] else "") + HIDDEN, text)
    text = _COOKIE.sub(lambda match: f"{match['name']}{match['separator']}{HIDDEN}", text)
    text = _SCHEME_TOKEN.sub(lambda match: f"{match['scheme']} {HIDDEN}", text)
    text = _NAMED.sub(lambda match: f"{match['name']}{match['separator']}{HIDDEN}", text)
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def _without_password(match: re.Match) -> str:
    user, separator, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{HIDDEN}@" if separator else f"{match['scheme']}{HIDDEN}@"


class RedactingStream(io.TextIOBase):
    """A text stream that redacts whole lines before they reach ``stream``."""

    def __init__(self, stream: TextIO):
        self._stream, self._partial = stream, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._stream.isatty()

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        if lines:
            self._stream.write("".join(redact(line) + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._stream.write(redact(self._partial))
            self._partial = ""
        self._stream.flush()
