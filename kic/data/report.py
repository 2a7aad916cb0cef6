"""The prepare report (a JSON-able dict) as sections, rendered as Markdown and
HTML by ``kic.reports`` (which escapes every class and file name).

Both renderings are built from the same list of sections, so they always
agree, except for the thumbnails (a ``Gallery``: a few images per class and
the rejected files that still decode), which only the HTML page shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from kic import reports

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


# --------------------------------------------------------------------------- renderings


def document(report: dict, gallery: Gallery | None = None) -> reports.Report:
    """The report's blocks, for ``kic.reports`` to render; with ``gallery``, its thumbnails too."""
    blocks: list[reports.Block] = []
    for section in sections(report, gallery):
        blocks.append(reports.Heading(section.title))
        if section.headers:
            blocks.append(reports.Table(section.headers, section.rows))
        blocks += [reports.Paragraph(note, note=True) for note in section.notes]
        blocks += [reports.Figures([_figure(thumbnail) for thumbnail in thumbnails], heading=heading)
                   for heading, thumbnails in section.thumbnails]
    return reports.Report("Data report", blocks)


def render_markdown(report: dict) -> str:
    return reports.render_markdown(document(report))


def render_html(report: dict, gallery: Gallery | None = None) -> str:
    """The report as one self-contained page; ``gallery``: its thumbnails."""
    return reports.render_html(document(report, gallery))


def _figure(thumbnail: Thumbnail) -> reports.Figure:
    caption = [thumbnail.file, thumbnail.note] if thumbnail.note else [thumbnail.file]
    return reports.Figure(thumbnail.jpeg, alt=thumbnail.file, caption=caption, title=thumbnail.file)
