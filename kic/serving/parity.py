"""Training/serving parity, measured on the user's own files.

Training and evaluation see prepare's records: each image checked, turned
upright by its EXIF orientation, downscaled with LANCZOS to the prepared
short side and re-encoded once as JPEG. A served model sees the raw file,
decoded in the graph (EXIF orientation applied) and taken down the same
path (``kic.model.preprocessing.decode_and_resize`` with the model's
``image_short_side``), but not through a JPEG re-encode, and with
TensorFlow's kernels rather than Pillow's. The two paths cannot give
identical pixels, so the difference is measured, not assumed: for each file
of the split evaluation used whose original is still readable (and unchanged
since prepare), the exported ``serving_default`` signature on the raw bytes
is compared with the evaluate path (``kic.data.input_pipeline`` and the Keras
model) on its prepared record.

The bounds: top-1 agrees on at least ``AGREEMENT_BOUND`` of the files and no
probability differs by more than ``MAX_DIFF_BOUND``. Outside them the export
logs a warning and records it in its parity report. It fails only when the
skew is clearly systematic (``clearly_exceeded``): at least
``MIN_FILES_TO_FAIL`` files compared, and top-1 agreement under
``FAIL_AGREEMENT`` or more than ``FAIL_SHARE`` of the files off by more than
``FAIL_DIFF``. One odd file, or a handful of files in a small test split,
then never blocks a deployment, while a decode path that differs for a whole
kind of file does.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from kic import artifacts, storage
from kic.data import dataset_info, input_pipeline, schema, sources
from kic.errors import DataError
from kic.evaluation.evaluate import evaluation_split
from kic.model import loading, preprocessing
from kic.model.model_info import ModelInfo
from kic.serving.contract import INPUT_NAME, SIGNATURE_NAME
from kic.serving.predict import decoder_reason

AGREEMENT_BOUND = 0.99
MAX_DIFF_BOUND = 0.02
FAIL_AGREEMENT = 0.95
FAIL_DIFF = 0.10
FAIL_SHARE = 0.05
MIN_FILES_TO_FAIL = 20
DEFAULT_MAX_FILES = 500  # the first files of the split in record order, which prepare shuffled
BATCH_SIZE = 16
LARGE_SIDE = 3000  # files with a longer side are their own kind: the DCT-scaled decode is at its strongest
WORST_FILES_SHOWN = 10


class ServingSkewError(DataError):
    """Served answers on the raw files differ systematically from what evaluation measured."""


@dataclasses.dataclass(frozen=True)
class FileParity:
    source: str  # the name the prepared record stores
    kind: str  # see file_kind
    served_top1: int
    evaluated_top1: int
    max_abs_diff: float  # over the probabilities the serving contract returns

    @property
    def agrees(self) -> bool:
        return self.served_top1 == self.evaluated_top1


@dataclasses.dataclass(frozen=True)
class ParityReport:
    split: str
    source_root: str
    num_records: int  # in the split
    files: tuple[FileParity, ...]  # compared
    skipped: dict[str, int]  # why other records were not compared -> how many
    unservable: tuple[tuple[str, str], ...]  # (source, decoder's reason): prepared for training, refused by serving

    @property
    def agreement(self) -> float | None:
        return float(np.mean([entry.agrees for entry in self.files])) if self.files else None

    @property
    def max_abs_diff(self) -> float | None:
        return max(entry.max_abs_diff for entry in self.files) if self.files else None

    @property
    def within_bounds(self) -> bool | None:
        """None when nothing could be compared."""
        if not self.files:
            return None
        return bool(self.agreement >= AGREEMENT_BOUND and self.max_abs_diff <= MAX_DIFF_BOUND)

    @property
    def clearly_exceeded(self) -> bool:
        if len(self.files) < MIN_FILES_TO_FAIL:
            return False
        far_off = np.mean([entry.max_abs_diff > FAIL_DIFF for entry in self.files])
        return bool(self.agreement < FAIL_AGREEMENT or far_off > FAIL_SHARE)

    def by_kind(self) -> dict[str, dict]:
        groups: dict[str, list[FileParity]] = collections.defaultdict(list)
        for entry in self.files:
            groups[entry.kind].append(entry)
        return {kind: {"files": len(entries),
                       "top1_agreement": float(np.mean([entry.agrees for entry in entries])),
                       "max_abs_diff": max(entry.max_abs_diff for entry in entries),
                       "mean_abs_diff": float(np.mean([entry.max_abs_diff for entry in entries]))}
                for kind, entries in sorted(groups.items())}

    def to_dict(self) -> dict:
        worst = sorted(self.files, key=lambda entry: (entry.agrees, -entry.max_abs_diff))[:WORST_FILES_SHOWN]
        return {
            "compared": "the serving_default signature on each original file vs the evaluate path on its "
                        "prepared record",
            "split": self.split,
            "source_root": self.source_root,
            "num_records": self.num_records,
            "num_files": len(self.files),
            "top1_agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "bounds": {"top1_agreement": AGREEMENT_BOUND, "max_abs_diff": MAX_DIFF_BOUND},
            "within_bounds": self.within_bounds,
            "fails_export_when": (f"at least {MIN_FILES_TO_FAIL} files and top-1 agreement < {FAIL_AGREEMENT} or "
                                  f"more than {FAIL_SHARE:.0%} of files off by more than {FAIL_DIFF}"),
            "clearly_exceeded": self.clearly_exceeded,
            "by_kind": self.by_kind(),
            "skipped": dict(self.skipped),
            "unservable": [{"file": source, "error": reason} for source, reason in self.unservable],
            "worst_files": [dataclasses.asdict(entry) for entry in worst],
        }

    def summary_lines(self) -> list[str]:
        skipped = sum(self.skipped.values())
        if not self.files:
            reasons = "; ".join(f"{count} {reason}" for reason, count in self.skipped.items()) or "no records"
            return [f"serving parity not measured on the {self.split} split: {reasons}"]
        verdict = "within bounds" if self.within_bounds else "OUTSIDE the bounds"
        lines = [f"serving parity on {len(self.files)} of {self.num_records} {self.split} files: top-1 agreement "
                 f"{self.agreement:.1%} (bound >= {AGREEMENT_BOUND:.0%}), max |diff| {self.max_abs_diff:.4f} "
                 f"(bound <= {MAX_DIFF_BOUND}): {verdict}"]
        lines += [f"  {kind:<28} {summary['files']:>5} files  agreement {summary['top1_agreement']:7.1%}  "
                  f"max |diff| {summary['max_abs_diff']:.4f}" for kind, summary in self.by_kind().items()]
        if skipped:
            lines.append("  not compared: " + "; ".join(f"{count} {reason}" for reason, count in self.skipped.items()))
        if self.unservable:
            lines.append(f"  WARNING: {len(self.unservable)} file(s) trained on cannot be served: "
                         + "; ".join(f"{source} ({reason})" for source, reason in self.unservable[:3]))
        return lines

    def check(self) -> None:
        """Raises ServingSkewError when the skew is clearly systematic."""
        if self.clearly_exceeded:
            kinds = ", ".join(f"{kind} ({summary['top1_agreement']:.0%} agree, max |diff| "
                              f"{summary['max_abs_diff']:.3f})" for kind, summary in self.by_kind().items())
            raise ServingSkewError(
                f"the served model answers differently on the original files than evaluation measured on the "
                f"prepared ones: top-1 agreement {self.agreement:.1%} on {len(self.files)} {self.split} files, "
                f"max probability difference {self.max_abs_diff:.3f}; by kind: {kinds}. See "
                f"{artifacts.SERVING_PARITY_REPORT} in the package.")


def measure(saved_model_dir: str, model, info: ModelInfo, dataset_dir: str, *,
            max_files: int = DEFAULT_MAX_FILES) -> ParityReport:
    """Compares the SavedModel's answers on original files with the Keras
    model's on the prepared records of the split evaluation uses."""
    data = dataset_info.load(dataset_dir)
    split = evaluation_split(data)
    root = split_source(dataset_dir, data, split)
    num_records = data.splits[split].num_examples if split in data.splits else 0
    skipped: collections.Counter = collections.Counter()
    files: list[FileParity] = []
    unservable: list[tuple[str, str]] = []
    if not num_records:
        return ParityReport(split, root, 0, (), {}, ())
    serve = tf.saved_model.load(saved_model_dir).signatures[SIGNATURE_NAME]
    digests = _original_digests(data.shard_paths(dataset_dir, split))
    dataset = input_pipeline.make_dataset(
        data.shard_paths(dataset_dir, split), image_size=info.image_size, interpolation=info.interpolation,
        batch_size=BATCH_SIZE, num_classes=data.num_classes, binary_mode=info.binary_mode, training=False,
        num_examples=num_records, with_source=True, short_side=data.image_short_side)
    seen = 0
    for pixels, _labels, names in dataset:
        if len(files) >= max_files:
            skipped[f"beyond the first {max_files} files"] += num_records - seen
            break
        if seen and not files and not unservable:
            skipped["not tried: none of the first originals could be compared"] += num_records - seen
            break
        evaluated = loading.logits_to_probabilities(model(pixels, training=False), info.binary_mode).numpy()
        names = [name.decode("utf-8") for name in names.numpy()]
        seen += len(names)
        originals = _read_originals(root, names, digests, skipped)
        readable = [index for index, raw in enumerate(originals) if raw is not None]
        room = max_files - len(files)
        if len(readable) > room:
            skipped[f"beyond the first {max_files} files"] += len(readable) - room
            readable = readable[:room]
        served = _serve(serve, [originals[index] for index in readable])
        for index, answer in zip(readable, served, strict=True):
            if isinstance(answer, str):
                unservable.append((names[index], answer))
            else:
                files.append(_compare(names[index], originals[index], answer, evaluated[index], info.binary_mode))
    return ParityReport(split, root, num_records, tuple(files), dict(skipped), tuple(unservable))


def split_source(dataset_dir: str, data: dataset_info.DatasetInfo, split: str) -> str:
    """The source the split's files were listed from: its explicit source in
    prepare's report (validation_source / test_source), else the training source."""
    report_path = storage.join(dataset_dir, artifacts.DATA_REPORT_JSON)
    if storage.exists(report_path):
        explicit = json.loads(storage.read_text(report_path)).get("sources", {}).get(split, "")
        if explicit:
            return explicit
    return data.source


def file_kind(raw: bytes) -> str:
    """A short description of what a file is, from its header: format, colour
    mode, transparency, EXIF orientation, very large size."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image_format = "JPEG" if image.format == "MPO" else image.format or "unknown"
            parts = [image_format]
            mode = image.mode
            if mode == "CMYK":
                parts.append("CMYK")
            elif mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F"):
                parts.append("grey")
            elif mode in ("P", "PA"):
                parts.append("palette")
            if mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                parts.append("alpha")
            if image.getexif().get(preprocessing.ORIENTATION_TAG, 1) in range(2, 9):
                parts.append("EXIF-rotated")
            if max(image.size) > LARGE_SIDE:
                parts.append(f"> {LARGE_SIDE} px")
            return " ".join(parts)
    except Exception:  # noqa: BLE001 - a description only; the decoders judge the file
        return "unknown"


def _original_digests(shard_paths: list[str]) -> dict[str, str]:
    """source name -> sha256 of the original file, as prepare recorded it."""
    spec = {schema.SOURCE_URI: tf.io.FixedLenFeature([], tf.string, default_value=""),
            schema.CONTENT_SHA256: tf.io.FixedLenFeature([], tf.string, default_value="")}
    digests = {}
    for record in tf.data.TFRecordDataset(shard_paths).map(lambda serialized: tf.io.parse_single_example(
            serialized, spec)).as_numpy_iterator():
        digests[record[schema.SOURCE_URI].decode("utf-8")] = record[schema.CONTENT_SHA256].decode("ascii")
    return digests


def _read_originals(root: str, names: list[str], digests: dict[str, str],
                    skipped: collections.Counter) -> list[bytes | None]:
    locations = [sources.location_of(root, name) for name in names]
    if any(location is None for location in locations):
        skipped["from TFDS (no original files)"] += len(names)
        return [None] * len(names)
    originals: list[bytes | None] = []
    for name, (_, content) in zip(names, storage.read_many(locations), strict=True):
        if isinstance(content, Exception):
            skipped["originals not readable from here"] += 1
            originals.append(None)
        elif hashlib.sha256(content).hexdigest() != digests.get(name):
            skipped["originals changed since prepare"] += 1
            originals.append(None)
        else:
            originals.append(content)
    return originals


def _serve(serve: Callable, raws: list[bytes]) -> list[np.ndarray | str]:
    """The signature's probabilities per file, or the decoder's reason for a file it refuses."""
    if not raws:
        return []
    try:
        return list(serve(**{INPUT_NAME: tf.constant(raws)})["probabilities"].numpy())
    except tf.errors.InvalidArgumentError as error:
        if len(raws) == 1:
            return [decoder_reason(error.message)]
        return [answer for raw in raws for answer in _serve(serve, [raw])]


def _compare(name: str, raw: bytes, served: np.ndarray, evaluated: np.ndarray, binary_mode: bool) -> FileParity:
    served_scores, evaluated_scores = (loading.class_scores(answer[np.newaxis], binary_mode).numpy()[0]
                                       for answer in (served, evaluated))
    return FileParity(source=name, kind=file_kind(raw), served_top1=int(np.argmax(served_scores)),
                      evaluated_top1=int(np.argmax(evaluated_scores)),
                      max_abs_diff=float(np.max(np.abs(served - evaluated))))


def write_report(package_dir: str, report: ParityReport) -> str:
    path = os.path.join(package_dir, artifacts.SERVING_PARITY_REPORT)
    storage.write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return path
