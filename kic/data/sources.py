"""Where the images of a dataset come from, and what class each one belongs to.

A source is one of:

* a folder per class, ``root/<class>/<file>`` (local, ``gs://`` or ``s3://``): files in
  nested subfolders belong to the class folder they are in; files directly in
  ``root``, hidden entries (``.DS_Store``, ``._*``, ``.ipynb_checkpoints/``),
  ``__MACOSX/``, OS metadata (``Thumbs.db``, ``desktop.ini``) and notes beside
  the images (text, JSON, CSV, YAML, markdown) are listed as ignored, as the
  reference reads only the images (``is_ignored``);
* a manifest with labels, ``*.csv`` (header ``uri,label``) or ``*.jsonl``
  (``{"uri": ..., "label": ...}`` per line), read by :mod:`kic.data.manifest`;
* ``tfds:NAME[:CONFIG]``, a TensorFlow Datasets dataset that is already
  prepared (in ``tfds_data_dir`` or TFDS's default folder); it is never
  downloaded. Its own train/validation/test splits are kept.

Listing only names files; the bytes are read later by :func:`read_payloads`.
Every item carries a ``name`` relative to its source root, which is what the
prepared records store, so the same data listed from a local copy or from
GCS gives byte-identical records.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from collections.abc import Iterable, Iterator

from kic import storage
from kic.data import manifest
from kic.errors import SourceError

__all__ = ["LocalFile", "Listing", "SourceError", "SourceItem", "list_source", "location_of", "read_payloads",
           "validate_class_names"]

TFDS_PREFIX = "tfds:"
# Files a folder of images carries that are known not to be images: counting them as rejected images would
# fail a good dataset on max_rejected_fraction. Anything else (a .jpg that is not one, an unknown extension)
# is read and judged by its content.
OS_METADATA_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})
NOTE_EXTENSIONS = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml", ".md", ".markdown")
IGNORED_FOLDERS = frozenset({"__macosx"})  # zip archives made on macOS
TFDS_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SourceItem:
    location: str  # what to read: a full path / gs:// URI, or a tfds locator
    name: str  # stable, source-relative name stored in the records
    label: str  # class name


@dataclasses.dataclass(frozen=True)
class LocalFile:
    """A payload that names a local file, read by whoever processes it (a
    worker process), so the parent never copies local bytes around."""

    path: str


@dataclasses.dataclass
class Listing:
    """What one source holds. ``parts`` maps a split name to its items:
    folders and manifests give only "train"; TFDS may give all three."""

    source: str
    kind: str  # "folder" | "manifest" | "tfds"
    parts: dict[str, list[SourceItem]]
    class_names: tuple[str, ...]  # every class the source declares, sorted
    ignored: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_items(self) -> int:
        return sum(len(items) for items in self.parts.values())


def list_source(source: str, *, tfds_data_dir: str = "") -> Listing:
    """Lists ``source``; raises SourceError when it is missing, empty or unusable."""
    source = source.strip()
    if not source:
        raise SourceError("no source given")
    if source.startswith(TFDS_PREFIX):
        listing = _list_tfds(source, tfds_data_dir)
    elif manifest.is_manifest(source):
        listing = _list_manifest(source)
    else:
        listing = _list_folder(source)
    validate_class_names(listing.class_names)
    if listing.num_items == 0:
        raise SourceError(f"{source}: no image files found")
    return listing


def location_of(source: str, name: str) -> str | None:
    """Where the item ``name`` of ``source`` (as a prepared record stores it)
    is read from, without listing the source; None for TFDS, whose items are
    not files."""
    source = source.strip()
    if source.startswith(TFDS_PREFIX):
        return None
    if manifest.is_manifest(source):
        return manifest.entry_location(source, name)
    if storage.is_remote(source):
        return source.rstrip("/") + "/" + name
    return os.path.join(os.path.abspath(source), *name.split("/"))


# --------------------------------------------------------------------------- class names


def validate_class_names(names: Iterable[str]) -> None:
    """Raises SourceError listing every class name that cannot be used.

    Names are untrusted: they become file-system paths in exports, keys in
    label maps and lines in labels.txt. Names that differ only by case or by
    Unicode normal form would collide on some file systems and confuse people.
    """
    problems = []
    seen: dict[str, str] = {}
    for name in sorted(set(names)):
        reason = _name_problem(name)
        if reason:
            problems.append(f"{name!r}: {reason}")
            continue
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            problems.append(f"{name!r}: same name as {seen[key]!r} once case and Unicode form are ignored")
        else:
            seen[key] = name
    if problems:
        raise SourceError("unusable class names:\n  " + "\n  ".join(problems))


def _name_problem(name: str) -> str | None:
    if not name or not name.strip():
        return "empty"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", ".."):
        return "is a relative path component"
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in name):
        return "contains control characters"
    return None


# --------------------------------------------------------------------------- folder per class


def _root_prefix(root: str) -> str:
    if storage.is_remote(root):
        return root.rstrip("/") + "/"
    return os.path.abspath(root).rstrip(os.sep) + os.sep


def _list_folder(source: str) -> Listing:
    prefix = _root_prefix(source)
    try:
        files = storage.list_files(source)
    except storage.StorageError as error:
        raise SourceError(f"cannot list source {source}: {error}") from None
    items, ignored = [], []
    classes: set[str] = set()
    for path in files:
        if storage.is_remote(path):
            relative = path[len(prefix):]
        else:
            relative = os.path.relpath(path, prefix).replace(os.sep, "/")
        parts = relative.split("/")
        if len(parts) < 2 or is_ignored(relative):
            ignored.append(relative)
            continue
        classes.add(parts[0])
        items.append(SourceItem(location=path, name=relative, label=parts[0]))
    if not storage.is_remote(source):
        # An empty class folder is a class with no images: keep it, so that
        # the size checks name it instead of it silently vanishing.
        with os.scandir(source) as entries:
            classes.update(entry.name for entry in entries
                           if entry.is_dir() and not _ignored_folder(entry.name))
    if not classes:
        raise SourceError(
            f"{source}: no class folders found; expected {source.rstrip('/')}/<class name>/<image file>")
    items.sort(key=lambda item: item.name)
    return Listing(source=source, kind="folder", parts={"train": items},
                   class_names=tuple(sorted(classes)), ignored=sorted(ignored))


def is_ignored(relative: str) -> bool:
    """Whether a file of a folder source (its path below the root, ``/``-separated)
    is known not to be an image: hidden, in a hidden or ``__MACOSX`` folder, OS
    metadata, or a note (text, JSON, CSV, YAML, markdown)."""
    *folders, name = relative.split("/")
    lowered = name.lower()
    return (any(_ignored_folder(folder) for folder in folders) or name.startswith(".")
            or lowered in OS_METADATA_FILES or lowered.endswith(NOTE_EXTENSIONS))


def _ignored_folder(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FOLDERS


# --------------------------------------------------------------------------- manifests


def _list_manifest(source: str) -> Listing:
    items = [SourceItem(location=row.location, name=row.name, label=row.label)
             for row in manifest.read_manifest(source, labels=True)]
    items.sort(key=lambda item: (item.name, item.label))
    return Listing(source=source, kind="manifest", parts={"train": items},
                   class_names=tuple(sorted({item.label for item in items})))


# --------------------------------------------------------------------------- TFDS


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    name: str
    config: str | None
    data_dir: str | None


def _parse_tfds(source: str, data_dir: str) -> _TfdsSpec:
    name, _, config = source[len(TFDS_PREFIX):].partition(":")
    if not name:
        raise SourceError(f"{source}: expected tfds:NAME or tfds:NAME:CONFIG")
    return _TfdsSpec(name=name, config=config or None, data_dir=data_dir or None)


def _tfds_builder(spec: _TfdsSpec):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(spec.name, config=spec.config, data_dir=spec.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise SourceError(f"TFDS has no dataset named {spec.name!r}") from None
    except (ValueError, AssertionError) as error:
        raise SourceError(f"cannot open TFDS dataset {spec.name!r}: {str(error).splitlines()[0]}") from None


def tfds_problem(source: str, data_dir: str = "") -> str | None:
    """Why prepare could not read the TFDS source ``source`` (an unknown
    dataset or config, or one not prepared in ``data_dir``), or None; asks
    TFDS's registry and the data folder only, never downloads."""
    try:
        spec = _parse_tfds(source, data_dir)
        builder = _tfds_builder(spec)
    except SourceError as error:
        return str(error)
    if not builder.is_prepared():
        where = spec.data_dir or "TFDS's default data folder"
        return (f"TFDS dataset {spec.name!r} is not prepared in {where}; prepare never downloads, so build it "
                f"first (e.g. `tfds build {spec.name}`) and pass its folder as tfds_data_dir")
    return None


def _tfds_keys(builder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(key, str) for key in keys):
        return keys
    return "image", "label"


def _tfds_splits(builder) -> list[str]:
    declared = set(builder.info.splits.keys())
    if not declared:  # info without split metadata (e.g. TFDS's own mock_data): try train
        return ["train"]
    return [split for split in TFDS_SPLITS if split in declared]


def _tfds_dataset(builder, spec: _TfdsSpec, split: str):
    import tensorflow_datasets as tfds

    image_key, _ = _tfds_keys(builder)
    decoders = None
    if isinstance(builder.info.features[image_key], tfds.features.Image):
        # The stored, already-encoded bytes: nothing is decoded twice.
        decoders = {image_key: tfds.decode.SkipDecoding()}
    try:
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    except AssertionError as error:
        where = spec.data_dir or "TFDS's default data folder"
        raise SourceError(
            f"TFDS dataset {spec.name!r} is not prepared in {where}; prepare never downloads, so "
            f"build it first (e.g. `tfds build {spec.name}`) and pass its folder as tfds_data_dir "
            f"({str(error).splitlines()[0]})") from None


def _list_tfds(source: str, data_dir: str) -> Listing:
    spec = _parse_tfds(source, data_dir)
    builder = _tfds_builder(spec)
    image_key, label_key = _tfds_keys(builder)
    features = builder.info.features
    if image_key not in features or label_key not in features or not hasattr(features[label_key], "names"):
        raise SourceError(f"TFDS dataset {spec.name!r} has no image/class-label feature pair")
    names = list(features[label_key].names)
    validate_class_names(names)
    splits = _tfds_splits(builder)
    if "train" not in splits:
        raise SourceError(
            f"TFDS dataset {spec.name!r} has no train split (it has {sorted(builder.info.splits)})")
    parts: dict[str, list[SourceItem]] = {}
    for split in splits:
        dataset = _tfds_dataset(builder, spec, split)
        labels = dataset.map(lambda example: example[label_key])
        parts[split] = [
            SourceItem(location=f"{source}/{split}/{index}", name=f"{source}/{split}/{index:08d}",
                       label=names[int(label)])
            for index, label in enumerate(labels.as_numpy_iterator())
        ]
    return Listing(source=source, kind="tfds", parts=parts, class_names=tuple(sorted(names)))


# --------------------------------------------------------------------------- reading


def read_payloads(listing: Listing, items: list[SourceItem], *, tfds_data_dir: str = "",
                  workers: int = storage.DEFAULT_WORKERS,
                  max_bytes: int | None = None) -> Iterator[tuple[SourceItem, object]]:
    """Yields ``(item, payload)`` in the order of ``items``.

    The payload is the raw bytes of the file, a :class:`LocalFile` (when no
    item is on GCS), a numpy array (TFDS image features that are not stored
    encoded), or the Exception that reading raised; one unreadable file does
    not stop the others. An object over ``max_bytes`` is not downloaded past
    it: its payload is ``storage.ObjectTooLarge`` (a LocalFile is judged by
    whoever reads it).
    """
    if listing.kind == "tfds":
        yield from _read_tfds(listing, items, tfds_data_dir)
        return
    if not any(storage.is_remote(item.location) for item in items):
        for item in items:
            yield item, LocalFile(item.location)
        return
    locations = (item.location for item in items)
    for item, (_, payload) in zip(items, storage.read_many(locations, workers, limit=max_bytes), strict=True):
        yield item, payload


def _read_tfds(listing: Listing, items: list[SourceItem],
               data_dir: str) -> Iterator[tuple[SourceItem, object]]:
    spec = _parse_tfds(listing.source, data_dir)
    builder = _tfds_builder(spec)
    image_key, _ = _tfds_keys(builder)
    wanted: dict[str, list[SourceItem]] = {}
    for item in items:
        split = item.location[len(listing.source) + 1:].partition("/")[0]
        wanted.setdefault(split, []).append(item)
    for split, split_items in wanted.items():
        by_location = {item.location: item for item in split_items}
        dataset = _tfds_dataset(builder, spec, split)
        images = dataset.map(lambda example: example[image_key])
        for index, image in enumerate(images.as_numpy_iterator()):
            item = by_location.pop(f"{listing.source}/{split}/{index}", None)
            if item is not None:
                yield item, image
            if not by_location:
                break
        for item in by_location.values():  # the dataset changed between listing and reading
            yield item, storage.StorageError(f"{item.location}: no longer in the TFDS dataset")
