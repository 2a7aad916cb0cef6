"""Renders the prepare report (a JSON-able dict) as Markdown and as HTML.

Both renderings are built from the same list of sections, so they always
agree, except for the thumbnails (a ``Gallery``: a few images per class and
the rejected files that still decode), which only the HTML page shows. The
HTML page is self-contained (inline style, images as data: URIs, no scripts,
no external resources) and every value is escaped: class names and file names
come from users.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Mapping, Sequence

MAX_LISTED = 200  # longer lists are cut in the renderings; the JSON report has them all


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    file: str  # the name shown under it
    jpeg: bytes
    note: str = ""  # e.g. why the file was rejected


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Thumbnails for the HTML report (see kic.data.gallery)."""

    per_class: Mapping[str, Sequence[Thumbnail]] = dataclasses.field(default_factory=dict)
    rejected: Sequence[Thumbnail] = ()
    classes_left_out: int = 0


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[object]] = ()
    notes: Sequence[str] = ()
    thumbnails: Sequence[tuple[str, Sequence[Thumbnail]]] = ()  # (heading, images): HTML only


def sections(report: dict, gallery: Gallery | None = None) -> list[Section]:
    gallery = gallery or Gallery()
    result = [_summary(report), _classes(report)]
    if any(gallery.per_class.values()):
        notes = [f"{gallery.classes_left_out} more classes are not shown."] if gallery.classes_left_out else []
        result.append(Section("A few images per class", notes=notes,
                              thumbnails=[(name, shown) for name, shown in gallery.per_class.items()]))
    rejected = report.get("rejected", {})
    if rejected.get("count"):
        result.append(Section("Rejected files by reason", ("reason", "files"),
                              sorted(rejected["by_reason"].items())))
        result.append(_listed("Rejected files", ("file", "class", "reason", "detail"),
                              [(entry["file"], entry["label"], entry["reason"], entry["detail"])
                               for entry in rejected["files"]]))
        if gallery.rejected:
            result.append(Section("Rejected files that still decode", thumbnails=[("", gallery.rejected)]))
    duplicates = report.get("duplicates", {})
    if duplicates.get("groups"):
        rows = []
        for group in duplicates["groups"]:
            kept = group["kept"]["file"] if group.get("kept") else "(none: conflicting labels)"
            dropped = ", ".join(f"{entry['file']} [{entry['label']}]" for entry in group["dropped"])
            rows.append((group["sha256"][:12], kept, dropped))
        summary = (f"{duplicates['num_dropped']} file(s) dropped in {len(duplicates['groups'])} group(s), "
                   f"{duplicates.get('num_conflicting_groups', 0)} with conflicting labels "
                   "(all copies of those are dropped).")
        result.append(_listed("Duplicate files (identical content)", ("sha256", "kept", "dropped"), rows,
                              notes=[summary]))
    result.append(_image_stats(report.get("image_stats", {})))
    if report.get("ignored"):
        result.append(_listed("Ignored files (not inside a class folder, hidden, OS metadata, or notes beside the "
                              "images; not counted as rejected)", ("file",),
                              [(name,) for name in report["ignored"]]))
    if report.get("warnings"):
        result.append(Section("Warnings", notes=report["warnings"]))
    timing = report.get("timing", {})
    if timing:
        result.append(Section("Timing", ("step", "value"), [(key, value) for key, value in timing.items()]))
    return result


def _summary(report: dict) -> Section:
    metrics = report.get("metrics", {})
    rows = [("status", report.get("status", "")),
            *[(f"source ({channel})", source) for channel, source in report.get("sources", {}).items()
              if source],
            *[(key, value) for key, value in metrics.items()],
            ("fingerprint", report.get("fingerprint", ""))]
    notes = [f"Error: {report['error']}"] if report.get("error") else []
    return Section("Summary", ("item", "value"), rows, notes)


def _classes(report: dict) -> Section:
    splits = report.get("splits", [])
    rows = []
    per_class = report.get("counts", {}).get("per_class", {})
    for index, name in enumerate(report.get("class_names", [])):
        counts = per_class.get(name, {})
        rows.append((index, name, *[counts.get(split, 0) for split in splits], sum(counts.values())))
    totals = report.get("counts", {}).get("per_split", {})
    rows.append(("", "total", *[totals.get(split, 0) for split in splits], sum(totals.values())))
    return Section("Images per class and split", ("index", "class", *splits, "total"), rows)


def _image_stats(stats: dict) -> Section:
    rows = []
    for key in ("original_width", "original_height", "stored_width", "stored_height"):
        if key in stats:
            rows.append((key.replace("_", " "), stats[key]["min"], stats[key]["median"], stats[key]["max"]))
    formats = ", ".join(f"{name}: {count}" for name, count in sorted(stats.get("formats", {}).items()))
    return Section("Image sizes (kept images)", ("measure", "min", "median", "max"), rows,
                   [f"Formats: {formats}"] if formats else [])


def _listed(title: str, headers: Sequence[str], rows: list, notes: Sequence[str] = ()) -> Section:
    notes = list(notes)
    if len(rows) > MAX_LISTED:
        notes.append(f"Showing {MAX_LISTED} of {len(rows)}; the JSON report lists all.")
    return Section(title, headers, rows[:MAX_LISTED], notes)


# --------------------------------------------------------------------------- Markdown


def _md_cell(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split())  # a newline would end the table row


def render_markdown(report: dict) -> str:
    lines = ["# Data report", ""]
    for section in sections(report):
        lines += [f"## {section.title}", ""]
        if section.headers:
            lines.append("| " + " | ".join(_md_cell(header) for header in section.headers) + " |")
            lines.append("|" + "---|" * len(section.headers))
            lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in section.rows]
            lines.append("")
        for note in section.notes:
            lines += [_md_cell(note), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { word-break: break-word; max-width: 40em; }
p.note { color: #555; }
div.thumbnails { display: flex; flex-wrap: wrap; gap: 0.5em; margin-bottom: 1em; }
figure { margin: 0; width: 104px; font-size: 0.75em; color: #555; word-break: break-all; }
figure img { display: block; max-width: 96px; max-height: 96px; border: 1px solid #ccc; }
"""


def render_html(report: dict, gallery: Gallery | None = None) -> str:
    """The report as one self-contained page; ``gallery``: its thumbnails."""
    escape = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Data report</title>", f"<style>{_STYLE}</style></head><body>", "<h1>Data report</h1>"]
    for section in sections(report, gallery):
        parts.append(f"<h2>{escape(section.title)}</h2>")
        if section.headers:
            parts.append("<table><thead><tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in section.headers)
                         + "</tr></thead><tbody>")
            for row in section.rows:
                parts.append("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>")
            parts.append("</tbody></table>")
        for note in section.notes:
            parts.append(f'<p class="note">{escape(note)}</p>')
        for heading, thumbnails in section.thumbnails:
            if heading:
                parts.append(f"<h3>{escape(heading)}</h3>")
            parts.append('<div class="thumbnails">' + "".join(_figure(thumbnail) for thumbnail in thumbnails)
                         + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure(thumbnail: Thumbnail) -> str:
    name = html.escape(thumbnail.file, quote=True)
    caption = name + (f"<br>{html.escape(thumbnail.note)}" if thumbnail.note else "")
    data = base64.b64encode(thumbnail.jpeg).decode("ascii")
    return (f'<figure><img src="data:image/jpeg;base64,{data}" alt="{name}" title="{name}">'
            f"<figcaption>{caption}</figcaption></figure>")
