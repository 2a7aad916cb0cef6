"""Manifests: lists of image files, with or without labels. One reader for
prepare (which needs labels) and batch prediction (which ignores them), so a
manifest that trains also predicts.

* ``.csv``: a header row, then one image per row. The image column is the
  first of ``uri``, ``image``, ``path``, ``file``, ``image_uri``; labels are in
  ``label``. Header names are matched without regard to case or surrounding
  spaces; a UTF-8 byte-order mark is ignored.
* ``.jsonl``: one JSON object per line, with the same keys (a label may be a
  string or an integer).
* ``.txt``: one image per line, no labels.

Relative entries are relative to the manifest's own folder, local, gs:// or s3://.
Blank lines are skipped; a line without an image (or, where labels are needed,
without a label) is an error, and every such line is named at once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import posixpath
import re

from kic import storage
from kic.errors import SourceError

SUFFIXES = (".csv", ".jsonl", ".txt")
LABELLED_SUFFIXES = (".csv", ".jsonl")
IMAGE_KEYS = ("uri", "image", "path", "file", "image_uri")
LABEL_KEY = "label"
_LINES_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    location: str  # the image's full path or gs:// URI
    name: str  # the entry as written in the manifest
    label: str | None  # None when the manifest has no labels


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(SUFFIXES)


def read_manifest(uri: str, *, labels: bool) -> list[ManifestRow]:
    """The rows of the manifest at ``uri``, in file order; with ``labels``,
    every row must have one."""
    lower = uri.lower()
    if labels and not lower.endswith(LABELLED_SUFFIXES):
        raise SourceError(f"manifest {uri}: a {os.path.splitext(lower)[1] or 'plain'} manifest carries no labels; "
                          "use .csv (columns uri,label) or .jsonl")
    try:
        text = storage.read_text(uri).lstrip("\ufeff")
    except UnicodeDecodeError:
        raise SourceError(f"manifest {uri} is not UTF-8 text") from None
    except storage.StorageError as error:
        raise SourceError(f"cannot read manifest {uri}: {error}") from None
    if lower.endswith(".csv"):
        entries = _csv_entries(uri, text, labels)
    elif lower.endswith(".jsonl"):
        entries = _jsonl_entries(text, labels)
    else:
        entries = [(number, line.strip(), None) for number, line in enumerate(text.splitlines(), start=1)
                   if line.strip()]
    bad = [number for number, name, label in entries if not name or (labels and not label)]
    if bad:
        needs = "an image and a label" if labels else "an image"
        raise SourceError(f"manifest {uri}: {len(bad)} line(s) without {needs}: line {_numbers(bad)}")
    # Joined to the manifest's folder, http://host/a.jpg would become a local path that does not exist.
    unreadable = [(number, name) for number, name, _ in entries if _SCHEME.match(name) and not _readable(name)]
    if unreadable:
        schemes = sorted({_SCHEME.match(name)[0] for _, name in unreadable})
        raise SourceError(f"manifest {uri}: {len(unreadable)} line(s) name images at {', '.join(schemes)} URIs, "
                          f"which kic cannot read: line {_numbers([number for number, _ in unreadable])}; use "
                          "local paths (absolute, or relative to the manifest) or "
                          + " or ".join(f"{scheme} URIs" for scheme in storage.REMOTE_SCHEMES))
    base = _base(uri)
    return [ManifestRow(location=_resolve(base, name), name=name, label=label) for _, name, label in entries]


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _readable(entry: str) -> bool:
    return storage.is_remote(entry)


def _numbers(numbers: list[int]) -> str:
    return ", ".join(str(number) for number in numbers[:_LINES_SHOWN]) + (" ..." if len(numbers) > _LINES_SHOWN
                                                                         else "")


def entry_location(uri: str, entry: str) -> str:
    """Where the entry ``entry`` of the manifest at ``uri`` points (what read_manifest gives as its location)."""
    return _resolve(_base(uri), entry)


def _base(uri: str) -> str:
    return posixpath.dirname(uri) if storage.is_remote(uri) else os.path.dirname(os.path.abspath(uri))


def _csv_entries(uri: str, text: str, labels: bool) -> list[tuple[int, str, str | None]]:
    reader = csv.reader(io.StringIO(text))
    try:
        return _csv_rows(uri, reader, labels)
    except csv.Error as error:  # a field over csv's 128 KiB limit, a NUL byte: not a list of image paths
        raise SourceError(f"manifest {uri}: line {reader.line_num} cannot be read as CSV ({error}); is it the "
                          "right file?") from None


def _csv_rows(uri: str, reader, labels: bool) -> list[tuple[int, str, str | None]]:
    header = next(reader, None)
    columns = [column.strip().lower() for column in header or []]
    image_column = next((columns.index(key) for key in IMAGE_KEYS if key in columns), None)
    label_column = columns.index(LABEL_KEY) if LABEL_KEY in columns else None
    if image_column is None or (labels and label_column is None):
        wanted = f"an image column ({', '.join(IMAGE_KEYS)})" + (f" and a {LABEL_KEY} column" if labels else "")
        raise SourceError(f"manifest {uri}: the first line must be a header naming {wanted}; got {header!r}")
    entries = []
    for number, row in enumerate(reader, start=2):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        name = cells[image_column] if image_column < len(cells) else ""
        label = cells[label_column] if label_column is not None and label_column < len(cells) else None
        entries.append((number, name, label if labels else None))
    return entries


def _jsonl_entries(text: str, labels: bool) -> list[tuple[int, str, str | None]]:
    entries: list[tuple[int, str, str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            entries.append((number, "", None))
            continue
        keys = {str(key).strip().lower(): value for key, value in record.items()}
        name = next((keys[key] for key in IMAGE_KEYS if key in keys), "")
        label = keys.get(LABEL_KEY)
        if isinstance(label, int) and not isinstance(label, bool):
            label = str(label)
        entries.append((number, name.strip() if isinstance(name, str) else "",
                        label if labels and isinstance(label, str) else None))
    return entries


def _resolve(base: str, entry: str) -> str:
    if storage.is_remote(entry) or os.path.isabs(entry):
        return entry
    if storage.is_remote(base):
        scheme = storage.scheme(base)
        return scheme + posixpath.normpath(posixpath.join(base[len(scheme):], entry))
    return os.path.normpath(os.path.join(base, entry))
