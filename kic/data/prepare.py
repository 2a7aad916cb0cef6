"""The prepare step: sources -> validated images -> stratified splits -> TFRecord shards.

Steps, in order:

1. List every source (see :mod:`kic.data.sources`); refuse bad class names,
   classes too small to split and validation/test classes unknown to train
   before any image is decoded.
2. Read and normalise every file (:func:`kic.data.images.normalize_image`) in
   a pool of worker processes. A rejected file is counted and reported, never
   fatal by itself.
3. Drop exact duplicates (same sha256 of the original bytes). Of copies with
   one label the first is kept, preferring a test copy over a validation copy
   over a training copy, then the first by name; so an image given in an
   explicit validation or test source is dropped from train. When the copies
   carry different labels nobody can tell which is right: all are dropped,
   and the group is reported as conflicting.
4. Split the training images per class (:mod:`kic.data.splits`), unless
   explicit validation/test sources or the dataset's own TFDS splits say
   otherwise.
5. Write shards (temporary name, then rename), labels, the report, and
   ``dataset_info.json`` last. Any previous ``dataset_info.json`` is removed
   first, so an interrupted re-run never leaves a directory that looks finished.

Class indices are positions in the Python-sorted list of class names for every
kind of source (TFDS label ids are remapped), so in binary mode the positive
class is the alphabetically second. Normalised images wait in a spool file in
the temporary folder (``TMPDIR``) until the splits are known; it needs about
the size of the prepared dataset.

A run that fails a data check (too many rejected files, a class left without
training images) writes the report first and then raises.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from kic import artifacts, storage
from kic.data import gallery, images, schema, splits
from kic.data import report as report_rendering
from kic.data.dataset_info import DatasetInfo, SplitInfo, save
from kic.data.images import (
    ImageLimits,
    ImageRejected,
    NormalizedImage,
    RejectReason,
    normalize_image,
    read_image_file,
)
from kic.data.sources import Listing, LocalFile, SourceError, SourceItem, list_source, read_payloads
from kic.errors import DataError, ParameterError, Problem
from kic.machine import available_cores

__all__ = ["DataQualityError", "PrepareOptions", "PrepareResult", "SourceError", "prepare_dataset"]

UNREADABLE = "unreadable"  # reject reason for files that could not be read at all
INTERNAL_ERROR = "internal_error"  # normalisation raised something unexpected
PROGRESS_INTERVAL_S = 5.0
CHANNEL_PRIORITY = {"test": 0, "validation": 1, "train": 2}  # which duplicate copy is kept
_SHARD_RE = re.compile(r"^(train|validation|test)-\d{5}-of-\d{5}\.tfrecord$")
DEFAULT_MAX_REJECTED_FRACTION = 0.05


class DataQualityError(DataError):
    """The data failed a quality check; raised after the report was written."""


def rejected_fraction_problems(value: float) -> list[Problem]:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        return [Problem("max_rejected_fraction", value, "a number in [0, 1] (1: never fail for rejected files)")]
    return []


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    source: str  # local dir | gs:// prefix | manifest (.csv / .jsonl) | "tfds:NAME[:CONFIG]"
    output_dir: str  # local dir or gs:// prefix
    validation_source: str = ""
    test_source: str = ""
    validation_fraction: float = splits.DEFAULT_VALIDATION_FRACTION  # used when there is no validation source
    test_fraction: float = splits.DEFAULT_TEST_FRACTION  # used when there is no test source; 0 = no test split
    seed: int = splits.DEFAULT_SEED
    image_short_side: int = images.DEFAULT_SHORT_SIDE
    max_image_bytes: int = images.DEFAULT_MAX_BYTES
    max_image_pixels: int = images.DEFAULT_MAX_PIXELS
    images_per_shard: int = 1024
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION
    tfds_data_dir: str = ""
    workers: int = 0  # 0 = every available core

    def validate(self) -> None:
        """Raises one ParameterError listing every problem."""
        problems = [Problem(name, getattr(self, name), "must not be empty")
                    for name in ("source", "output_dir") if not getattr(self, name).strip()]
        problems += splits.fraction_problems(
            validation_fraction=self.validation_fraction, test_fraction=self.test_fraction,
            validation_source=self.validation_source, test_source=self.test_source, need_validation=False)
        problems += rejected_fraction_problems(self.max_rejected_fraction)
        for name in ("image_short_side", "max_image_bytes", "max_image_pixels", "images_per_shard"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(Problem(name, value, "a positive integer"))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            problems.append(Problem("seed", self.seed, "an integer"))
        if not isinstance(self.workers, int) or self.workers < 0:
            problems.append(Problem("workers", self.workers, "0 (all cores) or a positive integer"))
        for name in ("source", "validation_source", "test_source"):
            value = getattr(self, name)
            if value and self.output_dir and _inside(self.output_dir, value):
                problems.append(Problem("output_dir", self.output_dir, f"is inside {name} {value}; its files would "
                                                                       "be read back as images on the next run"))
        if problems:
            raise ParameterError(problems)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                           short_side=self.image_short_side)


def _inside(path: str, folder: str) -> bool:
    if folder.startswith("tfds:") or folder.lower().endswith((".csv", ".jsonl")):
        return False
    if storage.scheme(path) != storage.scheme(folder):
        return False
    if storage.is_remote(path):
        return (path.rstrip("/") + "/").startswith(folder.rstrip("/") + "/")
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    info: DatasetInfo
    report: dict
    markdown: str
    html: str


# --------------------------------------------------------------------------- per-file records


@dataclasses.dataclass
class _Entry:
    """One listed file and what became of it."""

    item: SourceItem
    channel: str  # the source it came from: "train", "validation" or "test"
    sha256: str = ""
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    original_format: str = ""
    spool_offset: int = 0
    spool_length: int = 0
    reason: str = ""  # set when rejected
    detail: str = ""

    @property
    def rejected(self) -> bool:
        return bool(self.reason)

    def describe(self) -> dict:
        return {"file": self.item.location, "label": self.item.label, "channel": self.channel}


# --------------------------------------------------------------------------- worker side


def _normalize_payload(payload: object, limits: ImageLimits) -> NormalizedImage | tuple[str, str]:
    """Runs in a worker process; returns the image or (reason, detail)."""
    try:
        if isinstance(payload, LocalFile):
            try:
                payload = read_image_file(payload.path, limits.max_bytes)
            except (OSError, storage.StorageError) as error:
                return UNREADABLE, str(error)
        elif not isinstance(payload, bytes):
            payload = _encode_array(payload)
        return normalize_image(payload, limits)
    except ImageRejected as rejection:
        return rejection.reason.value, rejection.detail
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - one odd file must not end a long run; it is reported
        return INTERNAL_ERROR, f"{type(error).__name__}: {error}"


def _encode_array(array) -> bytes:
    """PNG-encodes a uint8 array (TFDS images not stored encoded); lossless."""
    import numpy as np
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8, copy=False)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _normalize_chunk(chunk: list[tuple[int, object]], limits: ImageLimits) -> list[tuple[int, object]]:
    return [(index, _normalize_payload(payload, limits)) for index, payload in chunk]


# --------------------------------------------------------------------------- parent side


def _chunks(iterable: Iterable[tuple[int, object]], size: int) -> Iterator[list[tuple[int, object]]]:
    chunk: list[tuple[int, object]] = []
    for element in iterable:
        chunk.append(element)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _normalize_all(payloads: Iterable[tuple[int, object]], total: int, limits: ImageLimits, workers: int,
                   on_result: Callable[[int, object], None]) -> None:
    """Normalises every payload, calling ``on_result(index, result)`` in
    completion order (callers must not depend on that order)."""
    # Small chunks keep every worker busy to the end; a chunk costs one round trip.
    chunk_size = max(1, min(8, total // max(1, workers * 16)))
    workers = max(1, min(workers, math.ceil(total / chunk_size)))
    def readable(chunk: list[tuple[int, object]]) -> list[tuple[int, object]]:
        # Read failures are settled here: exceptions do not always survive pickling.
        for index, payload in chunk:
            if isinstance(payload, storage.ObjectTooLarge):
                on_result(index, (RejectReason.TOO_LARGE.value, str(payload)))
            elif isinstance(payload, Exception):
                on_result(index, (UNREADABLE, str(payload)))
        return [(index, payload) for index, payload in chunk if not isinstance(payload, Exception)]

    if workers == 1:
        for chunk in _chunks(payloads, chunk_size):
            for index, result in _normalize_chunk(readable(chunk), limits):
                on_result(index, result)
        return
    # spawn, not fork: TensorFlow may already be loaded in this process, and
    # forking a process with TF's threads running can deadlock the child.
    context = multiprocessing.get_context("spawn")
    max_pending = workers * 3
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: set[concurrent.futures.Future] = set()

        def drain(until: int) -> None:
            nonlocal pending
            while len(pending) > until:
                done, pending = concurrent.futures.wait(pending,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    for index, result in future.result():
                        on_result(index, result)

        try:
            for chunk in _chunks(payloads, chunk_size):
                work = readable(chunk)
                if work:
                    pending.add(pool.submit(_normalize_chunk, work, limits))
                drain(max_pending)
            drain(0)
        except concurrent.futures.process.BrokenProcessPool:
            raise RuntimeError(
                "an image worker process died: out of memory (try fewer workers), or a script started prepare "
                "without an `if __name__ == \"__main__\":` guard, which worker processes need") from None
        finally:
            for future in pending:
                future.cancel()


class _Progress:
    def __init__(self, report: Callable[[str], None] | None, total: int,
                 interval: float = PROGRESS_INTERVAL_S) -> None:
        self._report = report
        self._interval = interval
        self.total = total
        self.done = 0
        self.rejected = 0
        self._start = time.monotonic()
        self._last = self._start

    def say(self, message: str) -> None:
        if self._report is not None:
            self._report(message)

    def tick(self, rejected: bool) -> None:
        self.done += 1
        self.rejected += rejected
        now = time.monotonic()
        if now - self._last >= self._interval or self.done == self.total:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            self.say(f"prepare: {self.done}/{self.total} images ({rate:.0f}/s), {self.rejected} rejected")


# --------------------------------------------------------------------------- listing


@dataclasses.dataclass
class _Channels:
    listings: dict[str, Listing]  # channel -> the listing it comes from
    items: dict[str, list[SourceItem]]  # channel -> its items
    class_names: tuple[str, ...]
    ignored: list[str]


def _list_channels(options: PrepareOptions, progress: _Progress) -> _Channels:
    progress.say(f"prepare: listing {options.source}")
    main = list_source(options.source, tfds_data_dir=options.tfds_data_dir)
    listings = {"train": main}
    items = {"train": main.parts["train"]}
    for channel in ("validation", "test"):
        explicit = getattr(options, f"{channel}_source")
        if explicit:
            progress.say(f"prepare: listing {explicit}")
            listing = list_source(explicit, tfds_data_dir=options.tfds_data_dir)
            listings[channel] = listing
            items[channel] = listing.parts.get(channel, listing.parts.get("train", []))
        elif channel in main.parts:  # the dataset's own split (TFDS)
            listings[channel] = main
            items[channel] = main.parts[channel]
    class_names = main.class_names
    if len(class_names) < 2:  # else only train finds out, after every image has been prepared
        found = f"only class {class_names[0]!r}" if class_names else "no class"
        raise SourceError(f"{options.source} has {found}: a classifier needs at least 2 classes (a folder of "
                          "images per class, or a label column in a manifest)")
    for channel in ("validation", "test"):
        if channel in items:
            unknown = sorted({item.label for item in items[channel]} - set(class_names))
            if unknown:
                raise SourceError(f"the {channel} data has classes that the training data does not: "
                                  + ", ".join(repr(name) for name in unknown))
    ignored = [f"{listing.source}: {name}" if listing is not main else name
               for listing in {id(value): value for value in listings.values()}.values()
               for name in listing.ignored]
    return _Channels(listings=listings, items=items, class_names=class_names, ignored=ignored)


def _fractions(options: PrepareOptions, channels: _Channels) -> dict[str, float]:
    """Shares of the training source per split (only what is split from it)."""
    validation = 0.0 if "validation" in channels.items else options.validation_fraction
    test = 0.0 if "test" in channels.items else options.test_fraction
    return splits.split_fractions(validation, test)


# --------------------------------------------------------------------------- dedup + split


def _deduplicate(entries: list[_Entry]) -> tuple[list[_Entry], list[dict], int, int]:
    groups: dict[str, list[_Entry]] = collections.defaultdict(list)
    for entry in entries:
        if not entry.rejected:
            groups[entry.sha256].append(entry)
    kept, reports, dropped, conflicting = [], [], 0, 0
    for digest, members in groups.items():
        members.sort(key=lambda entry: (CHANNEL_PRIORITY[entry.channel], entry.item.name,
                                        entry.item.location))
        if len(members) == 1:
            kept.append(members[0])
            continue
        if len({entry.item.label for entry in members}) > 1:
            conflicting += 1
            dropped += len(members)
            reports.append({"sha256": digest, "conflicting": True, "kept": None,
                            "dropped": [entry.describe() for entry in members]})
            continue
        kept.append(members[0])
        dropped += len(members) - 1
        reports.append({"sha256": digest, "conflicting": False, "kept": members[0].describe(),
                        "dropped": [entry.describe() for entry in members[1:]]})
    reports.sort(key=lambda group: (group["kept"] or group["dropped"][0])["file"])
    return kept, reports, dropped, conflicting


# --------------------------------------------------------------------------- writing


def _remove(uri: str) -> None:
    storage.remove_tree(uri)


def _write_shard(path: str, records: Iterable[bytes]) -> None:
    """Writes a TFRecord file under a temporary name and renames it (commit-last)."""
    import tensorflow as tf

    if storage.is_remote(path):
        with tempfile.TemporaryDirectory(prefix="kic-shard-") as folder:
            local = os.path.join(folder, os.path.basename(path))
            _write_shard(local, records)
            storage.copy_file(local, path)  # the object appears only once fully uploaded
        return
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_spool(spool, entry: _Entry) -> bytes:
    spool.seek(entry.spool_offset)
    return spool.read(entry.spool_length)


# --------------------------------------------------------------------------- report


def _stats(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _fingerprint(kept: list[_Entry], split_of: dict[str, str]) -> str:
    lines = sorted(f"{split_of[entry.sha256]}\t{entry.item.label}\t{entry.sha256}" for entry in kept)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the step


def prepare_dataset(options: PrepareOptions, progress: Callable[[str], None] | None = None,
                    progress_interval: float = PROGRESS_INTERVAL_S) -> PrepareResult:
    """Builds a prepared dataset in ``options.output_dir``; see the module docstring."""
    options.validate()
    started = time.monotonic()
    say = _Progress(progress, 0)

    channels = _list_channels(options, say)
    fractions = _fractions(options, channels)
    listed_counts = collections.Counter(item.label for item in channels.items["train"])
    splits.check_class_sizes({name: listed_counts.get(name, 0) for name in channels.class_names},
                             fractions, "files in the training source")
    total = sum(len(items) for items in channels.items.values())
    say.say(f"prepare: {total} files in {len(channels.class_names)} classes"
            + (f" ({len(channels.ignored)} ignored)" if channels.ignored else ""))
    listed_at = time.monotonic()

    entries: list[_Entry] = [_Entry(item=item, channel=channel)
                             for channel, items in channels.items.items() for item in items]
    workers = options.workers or available_cores()
    tracker = _Progress(progress, total, progress_interval)
    with tempfile.TemporaryFile(prefix="kic-prepare-spool-") as spool:

        def on_result(index: int, result: object) -> None:
            entry = entries[index]
            if isinstance(result, NormalizedImage):
                entry.sha256 = result.sha256
                entry.width, entry.height = result.width, result.height
                entry.original_width, entry.original_height = result.original_width, result.original_height
                entry.original_format = result.original_format
                entry.spool_offset = spool.seek(0, io.SEEK_END)
                entry.spool_length = spool.write(result.jpeg)
            else:
                entry.reason, entry.detail = result
            tracker.tick(entry.rejected)

        _normalize_all(_payloads(options, channels), total, options.image_limits(), workers, on_result)
        normalized_at = time.monotonic()

        kept, duplicate_groups, num_dropped, num_conflicting = _deduplicate(entries)
        split_of, problem = _assign_splits(options, channels, kept, fractions)
        report = _build_report(options, channels, entries, kept, split_of, duplicate_groups, num_dropped,
                               num_conflicting)
        report["timing"] = {"list_s": round(listed_at - started, 3),
                            "normalize_s": round(normalized_at - listed_at, 3),
                            "images_per_s": round(total / max(normalized_at - listed_at, 1e-9), 1),
                            "workers": workers}
        problem = problem or _quality_problem(options, report)
        gallery_started = time.monotonic()
        pictures = _gallery(channels, entries, kept, split_of, spool)
        report["timing"]["gallery_s"] = round(time.monotonic() - gallery_started, 3)

        storage.makedirs(options.output_dir)
        _remove(storage.join(options.output_dir, artifacts.DATASET_INFO))  # never leave a stale "finished"
        if problem is not None:
            report["status"], report["error"] = "failed", str(problem)
            _write_report(options.output_dir, report, started, pictures)
            raise problem

        info = _write_dataset(options, channels, kept, split_of, report, spool, say)
    write_done = time.monotonic()
    report["timing"]["write_s"] = round(write_done - normalized_at, 3)
    markdown, html = _write_report(options.output_dir, report, started, pictures)
    save(options.output_dir, info)  # last: only now is the directory a finished dataset
    say.say(f"prepare: done in {time.monotonic() - started:.1f}s -> {options.output_dir}")
    return PrepareResult(info=info, report=report, markdown=markdown, html=html)


def _payloads(options: PrepareOptions, channels: _Channels) -> Iterator[tuple[int, object]]:
    index = 0
    for channel, items in channels.items.items():
        listing = channels.listings[channel]
        for _, payload in read_payloads(listing, items, tfds_data_dir=options.tfds_data_dir,
                                        max_bytes=options.max_image_bytes):
            yield index, payload
            index += 1


def _assign_splits(options: PrepareOptions, channels: _Channels, kept: list[_Entry],
                   fractions: dict[str, float]) -> tuple[dict[str, str], Exception | None]:
    """sha256 -> split for every kept image, and the problem that stops the run, if any."""
    by_class: dict[str, list[str]] = {name: [] for name in channels.class_names}
    split_of: dict[str, str] = {}
    for entry in kept:
        if entry.channel == "train":
            by_class[entry.item.label].append(entry.sha256)
        else:
            split_of[entry.sha256] = entry.channel
    empty = [name for name, digests in by_class.items() if not digests]
    if empty:
        return split_of, DataQualityError(
            "no usable training images left for class(es) " + ", ".join(repr(name) for name in empty)
            + " after rejected files and duplicates were dropped; see the data report")
    try:
        split_of.update(splits.stratified_split(by_class, fractions, options.seed))
    except SourceError as error:
        return split_of, SourceError(f"{error} (after rejected files and duplicates were dropped)")
    return split_of, None


def _quality_problem(options: PrepareOptions, report: dict) -> DataQualityError | None:
    rejected = report["rejected"]
    if rejected["fraction"] <= options.max_rejected_fraction:
        return None
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(rejected["by_reason"].items()))
    return DataQualityError(
        f"{rejected['count']} of {report['metrics']['num_listed']} files ({rejected['fraction']:.1%}) were "
        f"rejected, more than max_rejected_fraction={options.max_rejected_fraction:g} ({reasons}); "
        f"see {artifacts.DATA_REPORT_MARKDOWN} in {options.output_dir}")


def _build_report(options: PrepareOptions, channels: _Channels, entries: list[_Entry], kept: list[_Entry],
                  split_of: dict[str, str], duplicate_groups: list[dict], num_dropped: int,
                  num_conflicting: int) -> dict:
    class_names = list(channels.class_names)
    present = [split for split in artifacts.SPLITS if split in set(split_of.values())]
    per_class = {name: {split: 0 for split in present} for name in class_names}
    for entry in kept:
        if entry.sha256 in split_of:
            per_class[entry.item.label][split_of[entry.sha256]] += 1
    per_split = {split: sum(counts[split] for counts in per_class.values()) for split in present}
    rejected = [entry for entry in entries if entry.rejected]
    by_reason = collections.Counter(entry.reason for entry in rejected)
    fraction = len(rejected) / len(entries) if entries else 0.0
    stored = [entry for entry in kept if entry.sha256 in split_of]
    return {
        "status": "ok",
        "error": None,
        "sources": {"train": options.source, "validation": options.validation_source,
                    "test": options.test_source},
        "options": dataclasses.asdict(options),
        "class_names": class_names,
        "label_map": {name: index for index, name in enumerate(class_names)},
        "splits": present,
        "counts": {"per_class": per_class, "per_split": per_split, "total": sum(per_split.values())},
        "rejected": {
            "count": len(rejected),
            "fraction": fraction,
            "by_reason": dict(sorted(by_reason.items())),
            "files": [{**entry.describe(), "reason": entry.reason, "detail": entry.detail}
                      for entry in sorted(rejected, key=lambda entry: (entry.channel, entry.item.name))],
        },
        "duplicates": {"num_dropped": num_dropped, "num_groups": len(duplicate_groups),
                       "num_conflicting_groups": num_conflicting, "groups": duplicate_groups},
        "ignored": channels.ignored,
        "image_stats": {
            "original_width": _stats([entry.original_width for entry in stored]),
            "original_height": _stats([entry.original_height for entry in stored]),
            "stored_width": _stats([entry.width for entry in stored]),
            "stored_height": _stats([entry.height for entry in stored]),
            "formats": dict(sorted(collections.Counter(entry.original_format for entry in stored).items())),
        },
        "fingerprint": _fingerprint(stored, split_of),
        "warnings": _warnings(class_names, per_class, present),
        "metrics": {
            "num_train": per_split.get("train", 0),
            "num_validation": per_split.get("validation", 0),
            "num_test": per_split.get("test", 0),
            "num_classes": len(class_names),
            "num_listed": len(entries),
            "num_rejected": len(rejected),
            "num_duplicates": num_dropped,
            "num_ignored": len(channels.ignored),
            "rejected_fraction": round(fraction, 6),
        },
    }


def _warnings(class_names: list[str], per_class: dict[str, dict[str, int]], present: list[str]) -> list[str]:
    warnings = []
    for split in present:
        if split == "train":
            continue
        missing = [name for name in class_names if per_class[name][split] == 0]
        if missing:
            warnings.append(f"the {split} split has no images of class(es) "
                            + ", ".join(repr(name) for name in missing))
    return warnings


def _gallery(channels: _Channels, entries: list[_Entry], kept: list[_Entry], split_of: dict[str, str],
             spool) -> report_rendering.Gallery:
    """The data report's thumbnails: the first images of each class by name
    (as stored), and the rejected files that still decode (read again)."""
    by_class: dict[str, list[_Entry]] = {name: [] for name in channels.class_names}
    for entry in sorted(kept, key=lambda entry: entry.item.name):
        if entry.sha256 in split_of and len(by_class[entry.item.label]) < gallery.PER_CLASS:
            by_class[entry.item.label].append(entry)
    per_class = {name: [(entry.item.name, functools.partial(_read_spool, spool, entry)) for entry in shown]
                 for name, shown in by_class.items()}
    rejected = [(entry.item.name, entry.reason, functools.partial(storage.read_bytes, entry.item.location))
                for entry in sorted((entry for entry in entries if entry.rejected),
                                    key=lambda entry: (entry.channel, entry.item.name))
                if channels.listings[entry.channel].kind != "tfds"]
    return gallery.build(per_class, rejected)


def _write_report(output_dir: str, report: dict, started: float,
                  pictures: report_rendering.Gallery | None = None) -> tuple[str, str]:
    report["timing"]["total_s"] = round(time.monotonic() - started, 3)
    markdown = report_rendering.render_markdown(report)
    html = report_rendering.render_html(report, pictures)
    storage.write_text(storage.join(output_dir, artifacts.DATA_REPORT_JSON),
                       json.dumps(report, indent=2, ensure_ascii=False))
    storage.write_text(storage.join(output_dir, artifacts.DATA_REPORT_MARKDOWN), markdown)
    storage.write_text(storage.join(output_dir, artifacts.DATA_REPORT_HTML), html)
    return markdown, html


def _write_dataset(options: PrepareOptions, channels: _Channels, kept: list[_Entry], split_of: dict[str, str],
                   report: dict, spool, say: _Progress) -> DatasetInfo:
    label_index = report["label_map"]
    by_digest = {entry.sha256: entry for entry in kept if entry.sha256 in split_of}
    split_infos: dict[str, SplitInfo] = {}
    for split in report["splits"]:
        order = splits.record_order([digest for digest, name in split_of.items() if name == split],
                                    options.seed, split)
        count = splits.num_shards(len(order), options.images_per_shard)
        say.say(f"prepare: writing {split}: {len(order)} images in {count} shards")
        names = []
        for index, (start, stop) in enumerate(splits.shard_ranges(len(order), count)):
            name = schema.shard_name(split, index, count)
            records = (_record(by_digest[digest], label_index, spool) for digest in order[start:stop])
            _write_shard(storage.join(options.output_dir, name), records)
            names.append(name)
        split_infos[split] = SplitInfo(num_examples=len(order), shards=tuple(names))

    fresh = {name for info in split_infos.values() for name in info.shards}
    for path in storage.list_files(options.output_dir):
        name = path.rsplit("/", 1)[-1]
        if _SHARD_RE.match(name) and name not in fresh and path == storage.join(options.output_dir, name):
            _remove(path)  # a shard of an earlier run with a different layout

    names_text = "\n".join(channels.class_names) + "\n"
    storage.write_text(storage.join(options.output_dir, artifacts.LABEL_MAP),
                       json.dumps(label_index, indent=2, ensure_ascii=False))
    storage.write_text(storage.join(options.output_dir, artifacts.LABELS_TXT), names_text)
    return DatasetInfo(class_names=tuple(channels.class_names), splits=split_infos,
                       fingerprint=report["fingerprint"], source=options.source,
                       image_short_side=options.image_short_side)


def _record(entry: _Entry, label_index: dict[str, int], spool) -> bytes:
    return schema.make_example(encoded=_read_spool(spool, entry), height=entry.height, width=entry.width,
                               label=label_index[entry.item.label], source=entry.item.name,
                               sha256=entry.sha256)
