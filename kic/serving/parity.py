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

What is judged is the model's input, not its answer: the pixels the served
model's own preprocessing (the SavedModel's ``preprocess``, which
``serving_default`` runs) computes from the original file against the pixels
evaluation computed from its prepared record, as mean and largest absolute
difference in pixel levels (0..255), per kind of file. That measures the
preprocessing alone. A model's answers are a poor measure of it: a weak
binary model near its decision boundary, or a one-epoch model whose
probabilities are near uniform, flips top-1 on sub-level noise that no
decoder can remove, while a confident model hides a real decoder bug.

The bounds, from measured parity (``benchmarks/bench_parity.py``): a
faithful decoder gives a mean difference of about 0.6-0.7 levels on JPEG
(prepare's re-encode) and 1.3-1.5 on PNG (Pillow's and TensorFlow's
resampling); a broken one (channels swapped, EXIF orientation not applied,
a crop or letterbox instead of training's resize) gives 5 to 30, and another
interpolation method 1-3 (a warning). A kind whose mean is over
``WARN_MEAN_LEVELS`` is outside the bounds: a warning in the log and the
parity report. Export is blocked (``serving_skew_action=block``; ``warn``
only warns) when the difference is systematic: for a kind of file, or for all
files together, at least ``MIN_FILES_TO_FAIL`` files compared and its median
file more than ``FAIL_MEAN_LEVELS`` off. The median, so one odd file never
blocks a deployment while a decoder that is wrong for a whole kind does.
Top-1 agreement, the largest probability difference, and accuracy served on
the labelled originals against evaluated on their records are reported
beside it, for people, not for the gate.
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
from kic.data.dataset_info import evaluation_split
from kic.errors import DataError
from kic.model import loading, preprocessing
from kic.model.model_info import ModelInfo
from kic.serving import contract
from kic.serving.contract import PIXELS_INPUT_NAME, PIXELS_SIGNATURE_NAME
from kic.serving.predict import decoder_reason

# In pixel levels (0..255) of the model's input. Faithful decoding: 0.6-0.7 on JPEG, 1.3-1.5 on PNG (real
# photos at 224 px), 0.4-0.9 for every kind in tests/test_parity.py. Broken: 14-32 with channels swapped, ~28
# without EXIF orientation on rotated files, 4-24 with a centre crop, more with a letterbox; another
# interpolation gives 1-3 (a warning, not a block: no more than resampling noise).
WARN_MEAN_LEVELS = 2.5
FAIL_MEAN_LEVELS = 5.0
MIN_FILES_TO_FAIL = 3
ALL_FILES = "all files"
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
    pixel_mean_diff: float  # mean |served - evaluated| over the model's input pixels, in levels 0..255
    pixel_max_diff: float  # the largest of those differences
    served_top1: int
    evaluated_top1: int
    max_abs_diff: float  # over the probabilities the serving contract returns
    label: int  # the file's class index

    @property
    def agrees(self) -> bool:
        return self.served_top1 == self.evaluated_top1


def _summary(entries: list[FileParity]) -> dict:
    means = [entry.pixel_mean_diff for entry in entries]
    return {"files": len(entries),
            "pixel_mean_diff": float(np.mean(means)),
            "pixel_median_file_diff": float(np.median(means)),
            "pixel_worst_file_diff": float(np.max(means)),
            "pixel_max_diff": float(max(entry.pixel_max_diff for entry in entries)),
            "top1_agreement": float(np.mean([entry.agrees for entry in entries])),
            "max_abs_diff": max(entry.max_abs_diff for entry in entries),
            "served_accuracy": float(np.mean([entry.served_top1 == entry.label for entry in entries])),
            "evaluated_accuracy": float(np.mean([entry.evaluated_top1 == entry.label for entry in entries]))}


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
    def pixel_mean_diff(self) -> float | None:
        return float(np.mean([entry.pixel_mean_diff for entry in self.files])) if self.files else None

    @property
    def pixel_max_diff(self) -> float | None:
        return max(entry.pixel_max_diff for entry in self.files) if self.files else None

    @property
    def served_accuracy(self) -> float | None:
        return _summary(list(self.files))["served_accuracy"] if self.files else None

    @property
    def evaluated_accuracy(self) -> float | None:
        return _summary(list(self.files))["evaluated_accuracy"] if self.files else None

    @property
    def within_bounds(self) -> bool | None:
        """Whether every kind's mean input difference is within WARN_MEAN_LEVELS; None when nothing was compared."""
        if not self.files:
            return None
        return all(summary["pixel_mean_diff"] <= WARN_MEAN_LEVELS for summary in self.by_kind().values())

    def systematic(self) -> dict[str, dict]:
        """The kinds of file (and ALL_FILES) whose inputs are systematically off: what blocks an export."""
        groups = {**self.by_kind(), **({ALL_FILES: _summary(list(self.files))} if self.files else {})}
        return {name: summary for name, summary in groups.items()
                if summary["files"] >= MIN_FILES_TO_FAIL and summary["pixel_median_file_diff"] > FAIL_MEAN_LEVELS}

    @property
    def clearly_exceeded(self) -> bool:
        return bool(self.systematic())

    def by_kind(self) -> dict[str, dict]:
        groups: dict[str, list[FileParity]] = collections.defaultdict(list)
        for entry in self.files:
            groups[entry.kind].append(entry)
        return {kind: _summary(entries) for kind, entries in sorted(groups.items())}

    def to_dict(self) -> dict:
        worst = sorted(self.files, key=lambda entry: -entry.pixel_mean_diff)[:WORST_FILES_SHOWN]
        return {
            "compared": "the model's input pixels from the served model's preprocessing of each original file vs "
                        "from the evaluate path's decode of its prepared record (levels 0..255), and the answers "
                        "of the serving signature vs the evaluate path",
            "split": self.split,
            "source_root": self.source_root,
            "num_records": self.num_records,
            "num_files": len(self.files),
            "pixel_mean_diff": self.pixel_mean_diff,
            "pixel_max_diff": self.pixel_max_diff,
            "top1_agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "served_accuracy": self.served_accuracy,
            "evaluated_accuracy": self.evaluated_accuracy,
            "bounds": {"pixel_mean_diff_per_kind": WARN_MEAN_LEVELS},
            "within_bounds": self.within_bounds,
            "blocks_export_when": (f"a kind of file (or all files) has at least {MIN_FILES_TO_FAIL} files compared "
                                   f"and its median file's mean input difference is over {FAIL_MEAN_LEVELS} "
                                   "pixel levels (serving_skew_action=block)"),
            "clearly_exceeded": self.clearly_exceeded,
            "systematic": self.systematic(),
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
        verdict = ("SYSTEMATIC SKEW" if self.clearly_exceeded
                   else "within bounds" if self.within_bounds else "OUTSIDE the bounds")
        lines = [f"serving parity on {len(self.files)} of {self.num_records} {self.split} files: the model's inputs "
                 f"differ by {self.pixel_mean_diff:.2f} pixel levels on average (bound <= {WARN_MEAN_LEVELS} a "
                 f"kind), {self.pixel_max_diff:.0f} at most: {verdict}; top-1 agreement {self.agreement:.1%}, max "
                 f"probability difference {self.max_abs_diff:.4f}, accuracy served {self.served_accuracy:.1%} "
                 f"vs evaluated {self.evaluated_accuracy:.1%}"]
        lines += [f"  {kind:<28} {summary['files']:>5} files  input diff mean {summary['pixel_mean_diff']:6.2f} "
                  f"median file {summary['pixel_median_file_diff']:6.2f} max {summary['pixel_max_diff']:4.0f}  "
                  f"agreement {summary['top1_agreement']:7.1%}  accuracy served {summary['served_accuracy']:7.1%} "
                  f"evaluated {summary['evaluated_accuracy']:7.1%}" for kind, summary in self.by_kind().items()]
        if skipped:
            lines.append("  not compared: " + "; ".join(f"{count} {reason}" for reason, count in self.skipped.items()))
        if self.unservable:
            lines.append(f"  WARNING: {len(self.unservable)} file(s) trained on cannot be served: "
                         + "; ".join(f"{source} ({reason})" for source, reason in self.unservable[:3]))
        return lines

    def skew_message(self) -> str:
        groups = "; ".join(f"{name}: {summary['files']} files, median file {summary['pixel_median_file_diff']:.1f} "
                           f"levels off (mean {summary['pixel_mean_diff']:.1f}, largest pixel "
                           f"{summary['pixel_max_diff']:.0f})" for name, summary in self.systematic().items())
        return (f"the served model's preprocessing gives the model other pixels than evaluation's did, "
                f"systematically (faithful decoding differs by about 1 level, this by over {FAIL_MEAN_LEVELS}), "
                f"on the {self.split} split's original files: {groups}. A decoder difference (channel order, resize "
                f"method, EXIF orientation) in the serving signature is the likely cause; see "
                f"{artifacts.SERVING_PARITY_REPORT} in the package")

    def check(self, action: str = contract.SKEW_ACTIONS[0]) -> None:
        """Raises ServingSkewError when the skew is systematic and ``action`` is block."""
        if self.clearly_exceeded and action == "block":
            raise ServingSkewError(self.skew_message() + " (serving_skew_action=warn exports anyway).")


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
    loaded = tf.saved_model.load(saved_model_dir)
    # serving_default is the pixels signature applied to preprocess's output (kic.serving.signature): taken
    # apart, each file is decoded once and both the model's input and its answer are compared.
    preprocess, from_pixels = loaded.preprocess, loaded.signatures[PIXELS_SIGNATURE_NAME]
    digests = _original_digests(data.shard_paths(dataset_dir, split))
    dataset = input_pipeline.evaluation_records(
        data.shard_paths(dataset_dir, split), image_size=info.image_size, interpolation=info.interpolation,
        short_side=data.image_short_side, batch_size=BATCH_SIZE)
    seen = 0
    for pixels, labels, names in dataset:
        if len(files) >= max_files:
            skipped[f"beyond the first {max_files} files"] += num_records - seen
            break
        if seen and not files and not unservable:
            skipped["not tried: none of the first originals could be compared"] += num_records - seen
            break
        evaluated = loading.logits_to_probabilities(model(pixels, training=False), info.binary_mode).numpy()
        evaluated_pixels = pixels.numpy()
        labels = labels.numpy()  # class indices (evaluation_records)
        names = [name.decode("utf-8") for name in names.numpy()]
        seen += len(names)
        originals = _read_originals(root, names, digests, skipped)
        readable = [index for index, raw in enumerate(originals) if raw is not None]
        room = max_files - len(files)
        if len(readable) > room:
            skipped[f"beyond the first {max_files} files"] += len(readable) - room
            readable = readable[:room]
        served = _serve(preprocess, from_pixels, [originals[index] for index in readable])
        for index, answer in zip(readable, served, strict=True):
            if isinstance(answer, str):
                unservable.append((names[index], answer))
            else:
                files.append(_compare(names[index], originals[index], answer, evaluated[index],
                                      evaluated_pixels[index], int(labels[index]), info.binary_mode))
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


def _serve(preprocess: Callable, from_pixels: Callable,
           raws: list[bytes]) -> list[tuple[np.ndarray, np.ndarray] | str]:
    """(served pixels, served probabilities) per file, or the decoder's reason for a file it refuses."""
    if not raws:
        return []
    try:
        pixels = preprocess(tf.constant(raws))
    except tf.errors.InvalidArgumentError as error:
        if len(raws) == 1:
            return [decoder_reason(error.message)]
        return [answer for raw in raws for answer in _serve(preprocess, from_pixels, [raw])]
    probabilities = from_pixels(**{PIXELS_INPUT_NAME: pixels})["probabilities"].numpy()
    return list(zip(pixels.numpy(), probabilities, strict=True))


def _compare(name: str, raw: bytes, served: tuple[np.ndarray, np.ndarray], evaluated: np.ndarray,
             evaluated_pixels: np.ndarray, label: int, binary_mode: bool) -> FileParity:
    served_pixels, served_probabilities = served
    served_scores, evaluated_scores = (loading.class_scores(answer[np.newaxis], binary_mode).numpy()[0]
                                       for answer in (served_probabilities, evaluated))
    pixel_diff = np.abs(served_pixels - evaluated_pixels)
    return FileParity(source=name, kind=file_kind(raw), pixel_mean_diff=float(pixel_diff.mean()),
                      pixel_max_diff=float(pixel_diff.max()), served_top1=int(np.argmax(served_scores)),
                      evaluated_top1=int(np.argmax(evaluated_scores)),
                      max_abs_diff=float(np.max(np.abs(served_probabilities - evaluated))), label=label)


def write_report(package_dir: str, report: ParityReport) -> str:
    path = os.path.join(package_dir, artifacts.SERVING_PARITY_REPORT)
    storage.write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return path
