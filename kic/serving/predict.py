"""Batch prediction with an exported serving package.

Images go through the package's own ``serving_default`` signature (raw bytes
in, probabilities out), so batch predictions are exactly what online serving
returns. A file that cannot be read or decoded becomes an ``error`` row with a
reason; it never stops the batch.

A row's ``probabilities`` maps class names to what the signature returned:
every class, or in binary mode only the positive class (P(positive), the
serving contract's single number). ``predicted_label``, ``score`` and
``top_k`` rank all classes in either mode.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from PIL import Image

from kic import artifacts, storage
from kic.data import manifest
from kic.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected, read_image_file
from kic.errors import DataError, ParameterError
from kic.model import loading
from kic.model.model_info import POSITIVE_CLASS_INDEX
from kic.serving.contract import (
    DEFAULT_PREDICTION_BATCH_SIZE,
    DEFAULT_TOP_K,
    IMAGE_EXTENSIONS,
    PREDICTION_FORMATS,
    SIGNATURE_NAME,
    prediction_problems,
)

CSV_COLUMNS = ("file", "status", "predicted_label", "score", "probabilities", "top_k", "error")
SUMMARY_ERRORS_SHOWN = 20
# The limits prepare applies to training images.
MAX_PIXELS = DEFAULT_MAX_PIXELS
MAX_BYTES = DEFAULT_MAX_BYTES


class PredictInputError(DataError):
    """The model or the inputs given to predict are not usable."""


@dataclasses.dataclass(frozen=True)
class PredictSummary:
    model: str
    inputs: str
    output: str
    total: int
    succeeded: int
    failed: int
    errors: tuple[tuple[str, str], ...]
    label_counts: dict[str, int]
    skipped_files: int
    seconds: float

    def to_dict(self) -> dict:
        payload = dataclasses.asdict(self)
        payload["errors"] = [{"file": file, "error": reason} for file, reason in self.errors]
        return payload


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """The ``serving_default`` signature of a loaded SavedModel and its labels."""

    signature: object
    input_name: str
    class_names: tuple[str, ...]
    binary_mode: bool = False  # probabilities is one column, P(class_names[POSITIVE_CLASS_INDEX])

    def probabilities(self, images: list[bytes]) -> np.ndarray:
        outputs = self.signature(**{self.input_name: tf.constant(images, dtype=tf.string)})
        return outputs["probabilities"].numpy()

    def named_probabilities(self, probabilities: np.ndarray) -> dict[str, float]:
        """One image's probabilities by the class they are of."""
        names = (self.class_names[POSITIVE_CLASS_INDEX],) if self.binary_mode else self.class_names
        return {name: round(float(probability), 6) for name, probability in zip(names, probabilities, strict=True)}

    def class_scores(self, probabilities: np.ndarray) -> np.ndarray:
        return loading.class_scores(probabilities, self.binary_mode).numpy()


def predict(model_path: str, inputs: str, output: str, *, batch_size: int = DEFAULT_PREDICTION_BATCH_SIZE,
            top_k: int = DEFAULT_TOP_K, output_format: str = PREDICTION_FORMATS[0]) -> PredictSummary:
    """Predicts every image in ``inputs`` and writes one row per file to ``output``.

    ``model_path``: a package directory, a SavedModel directory or a
    model.tar.gz (local or gs://). ``inputs``: a folder (searched recursively for
    image extensions), a manifest (.csv with a uri column, .txt one per line,
    .jsonl with a "uri" key; relative entries are relative to the manifest), a
    single image, or a gs:// prefix.
    """
    problems = prediction_problems(output_format=output_format, batch_size=batch_size, top_k=top_k,
                                   format_name="output_format")
    if problems:
        raise ParameterError(problems)
    started = time.perf_counter()
    files, skipped = list_inputs(inputs)
    rows: list[dict] = []
    with load_serving_model(model_path) as model:
        for start in range(0, len(files), batch_size):
            rows.extend(_predict_batch(model, files[start:start + batch_size], top_k))
    storage.write_text(output, _format_rows(rows, output_format))
    errors = tuple((row["file"], row["error"]) for row in rows if row["status"] == "error")
    labels = Counter(row["predicted_label"] for row in rows if row["status"] == "ok")
    return PredictSummary(model=model_path, inputs=inputs, output=output, total=len(rows),
                          succeeded=len(rows) - len(errors), failed=len(errors),
                          errors=errors, label_counts=dict(sorted(labels.items())), skipped_files=skipped,
                          seconds=time.perf_counter() - started)


def format_summary(summary: PredictSummary) -> str:
    rate = summary.total / summary.seconds if summary.seconds > 0 else 0.0
    lines = [
        (f"Predicted {summary.total} files with {summary.model}: {summary.succeeded} ok, "
         f"{summary.failed} failed ({summary.seconds:.1f} s, {rate:.1f} files/s)"),
        f"Output: {summary.output}",
    ]
    if summary.skipped_files:
        lines.append(f"Skipped {summary.skipped_files} files without an image extension "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
    if summary.label_counts:
        lines.append("Predicted labels: " + ", ".join(f"{label} {count}"
                                                      for label, count in summary.label_counts.items()))
    if summary.errors:
        lines.append("Failed files:")
        lines.extend(f"  {file}: {reason}" for file, reason in summary.errors[:SUMMARY_ERRORS_SHOWN])
        if len(summary.errors) > SUMMARY_ERRORS_SHOWN:
            lines.append(f"  ... and {len(summary.errors) - SUMMARY_ERRORS_SHOWN} more (see the output file)")
    return "\n".join(lines)


# --- The model ---------------------------------------------------------------

@contextlib.contextmanager
def load_serving_model(model_path: str) -> Iterator[ServingModel]:
    """Loads a package directory, a SavedModel directory or a model.tar.gz."""
    with contextlib.ExitStack() as stack:
        if not storage.exists(model_path):
            raise PredictInputError(f"model not found: {model_path}")
        local = stack.enter_context(storage.local_copy(model_path))
        if os.path.isfile(local):
            extracted = stack.enter_context(tempfile.TemporaryDirectory(prefix="kic-model-"))
            local = storage.extract_tarball(local, extracted)
        saved_model_dir = _find_saved_model(local)
        # Everything that can be checked without running the model's graph is checked first.
        columns = _check_signature(saved_model_dir, model_path)
        class_names = _package_class_names(saved_model_dir, columns, model_path)
        try:
            loaded = tf.saved_model.load(saved_model_dir)
        except (tf.errors.OpError, ValueError, OSError, IndexError) as error:  # damaged or missing variables
            message = error.message if isinstance(error, tf.errors.OpError) else str(error)
            raise PredictInputError(f"{model_path}: the SavedModel cannot be loaded: "
                                    f"{decoder_reason(message)}") from None
        signature = loaded.signatures[SIGNATURE_NAME]
        input_names = list(signature.structured_input_signature[1])
        if class_names is None:
            class_names = _class_names(saved_model_dir, loaded, model_path)
            _check_columns(class_names, columns, model_path)
        yield ServingModel(signature, input_names[0], class_names,
                           binary_mode=columns == 1 and len(class_names) == 2)


def _find_saved_model(directory: str) -> str:
    if os.path.isfile(os.path.join(directory, "saved_model.pb")):
        return directory
    versions = [name for name in os.listdir(directory)
                if name.isdigit() and os.path.isfile(os.path.join(directory, name, "saved_model.pb"))]
    if not versions:
        raise PredictInputError(
            f"no SavedModel in {directory}: expected saved_model.pb, "
            f"{artifacts.SAVED_MODEL_VERSION_DIR}/saved_model.pb or a {artifacts.MODEL_TARBALL}")
    return os.path.join(directory, max(versions, key=int))


def _check_signature(saved_model_dir: str, model_path: str) -> int:
    """Reads saved_model.pb's signatures (no graph is run) and returns the
    number of ``probabilities`` columns of ``serving_default``."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
            proto.ParseFromString(handle.read())
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise PredictInputError(f"{model_path}: saved_model.pb is damaged, not a SavedModel ({error})") from None
    signatures = proto.meta_graphs[0].signature_def if proto.meta_graphs else {}
    if SIGNATURE_NAME not in signatures:
        raise PredictInputError(f"{model_path} has no {SIGNATURE_NAME!r} signature (has: "
                                f"{', '.join(sorted(signatures)) or 'none'}); is it a kic export?")
    signature = signatures[SIGNATURE_NAME]
    inputs = list(signature.inputs)
    strings = len(inputs) == 1 and signature.inputs[inputs[0]].dtype == tf.string.as_datatype_enum
    if not strings or "probabilities" not in signature.outputs:
        raise PredictInputError(
            f"{model_path}: the {SIGNATURE_NAME} signature must take one string input (encoded images) and "
            f"return 'probabilities'; it takes {inputs} and returns {sorted(signature.outputs)}")
    dims = [dim.size for dim in signature.outputs["probabilities"].tensor_shape.dim]
    if len(dims) != 2 or dims[1] < 1:
        raise PredictInputError(f"{model_path}: 'probabilities' has shape {dims}, expected [batch, classes]")
    return dims[1]


def _check_columns(class_names: tuple[str, ...], columns: int, model_path: str) -> None:
    if columns != len(class_names) and not (columns == 1 and len(class_names) == 2):
        raise PredictInputError(
            f"{model_path}: the label map names {len(class_names)} classes but the model returns {columns} "
            "probabilities; the label map is not this model's")


def _package_class_names(saved_model_dir: str, columns: int, model_path: str) -> tuple[str, ...] | None:
    """The classes of the label map beside the SavedModel (package layout),
    checked against the model's ``columns`` of probabilities and the
    package's model_info.json where there is one; None without a label map."""
    for directory in (saved_model_dir, os.path.dirname(saved_model_dir)):
        label_map = os.path.join(directory, artifacts.LABEL_MAP)
        if os.path.isfile(label_map):
            break
    else:
        return None
    try:
        with open(label_map, encoding="utf-8") as handle:
            indices = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PredictInputError(f"{model_path}: {artifacts.LABEL_MAP} cannot be read: {error}") from None
    valid = (isinstance(indices, dict) and indices
             and all(isinstance(index, int) and not isinstance(index, bool) for index in indices.values())
             and sorted(indices.values()) == list(range(len(indices))))
    if not valid:
        raise PredictInputError(f"{model_path}: {artifacts.LABEL_MAP} must map each class name to its index "
                                f"0..N-1, once each; it holds {_shorten(indices)}")
    class_names = tuple(sorted(indices, key=indices.get))
    _check_columns(class_names, columns, model_path)
    info_path = os.path.join(directory, artifacts.MODEL_INFO)
    if os.path.isfile(info_path):
        try:
            with open(info_path, encoding="utf-8") as handle:
                info = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PredictInputError(f"{model_path}: {artifacts.MODEL_INFO} cannot be read: {error}") from None
        recorded = info.get("class_names") if isinstance(info, dict) else None
        if not isinstance(recorded, list) or tuple(recorded) != class_names:
            raise PredictInputError(f"{model_path}: {artifacts.MODEL_INFO} names the classes {_shorten(recorded)} "
                                    f"but {artifacts.LABEL_MAP} {list(class_names)!r}; the package is inconsistent")
    return class_names


def _shorten(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _class_names(saved_model_dir: str, loaded, model_path: str) -> tuple[str, ...]:
    """From the model itself (a bare SavedModel, without a package's label map)."""
    if hasattr(loaded, "class_names"):
        return tuple(name.decode("utf-8") for name in loaded.class_names.numpy())
    raise PredictInputError(f"{model_path}: no {artifacts.LABEL_MAP} found beside the SavedModel")


# --- The inputs ----------------------------------------------------------------

def list_inputs(inputs: str) -> tuple[list[str], int]:
    """Returns (image files in order, number of files skipped for their extension)."""
    lower = inputs.lower()
    if _is_special_file(inputs):
        if not lower.endswith(IMAGE_EXTENSIONS):  # reading a FIFO as a manifest would wait forever
            raise PredictInputError(f"inputs {inputs} is not a regular file, a folder or a gs:// or s3:// prefix")
        files, skipped = [inputs], 0  # rejected with its reason when read
    elif manifest.is_manifest(inputs) and _is_file(inputs):
        files = [row.location for row in manifest.read_manifest(inputs, labels=False)]
        skipped = 0
    elif lower.endswith(IMAGE_EXTENSIONS) and _is_file(inputs):
        files, skipped = [inputs], 0
    else:
        try:
            found = storage.list_files(inputs)
        except FileNotFoundError:
            raise PredictInputError(f"inputs not found: {inputs}") from None
        files = [file for file in found if file.lower().endswith(IMAGE_EXTENSIONS)]
        skipped = len(found) - len(files)
    if not files:
        raise PredictInputError(
            f"no images found in {inputs} (image extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files, skipped


def _is_file(uri: str) -> bool:
    return storage.exists(uri) and (storage.is_remote(uri) or os.path.isfile(uri))


def _is_special_file(uri: str) -> bool:
    """A local FIFO, device or socket (a symlink judged by its target)."""
    if "://" in uri:
        return False
    try:
        return not stat.S_ISREG(os.stat(uri).st_mode) and not os.path.isdir(uri)
    except OSError:
        return False


def _read_inputs(files: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
    """Each file's bytes, or why not: a local file is read only if it is a
    regular one of at most MAX_BYTES (kic.data.images.read_image_file)."""
    remote = [file for file in files if "://" in file]
    contents = dict(storage.read_many(remote, limit=MAX_BYTES)) if remote else {}
    for file in files:
        if file in contents:
            yield file, contents[file]
            continue
        try:
            yield file, read_image_file(file, MAX_BYTES)
        except (ImageRejected, OSError) as error:
            yield file, error


# --- Predicting ------------------------------------------------------------------

def _predict_batch(model: ServingModel, files: list[str], top_k: int) -> list[dict]:
    rows: dict[str, dict] = {}
    readable: dict[str, bytes] = {}
    for file, content in _read_inputs(files):
        if isinstance(content, ImageRejected):
            rows[file] = _error_row(file, str(content))
        elif isinstance(content, storage.ObjectTooLarge):
            rows[file] = _error_row(file, f"too large: more than {MAX_BYTES:,} bytes" if content.size is None
                                    else f"too large: {content.size:,} bytes (at most {MAX_BYTES:,})")
        elif isinstance(content, Exception):
            rows[file] = _error_row(file, f"unreadable: {content}")
        elif len(content) > MAX_BYTES:
            rows[file] = _error_row(file, f"too large: {len(content):,} bytes (at most {MAX_BYTES:,})")
        elif not content:
            rows[file] = _error_row(file, "empty file")
        elif problem := _pixel_count_problem(content):
            rows[file] = _error_row(file, problem)
        else:
            readable[file] = content
    if readable:
        try:
            probabilities = model.probabilities(list(readable.values()))
            for file, file_probabilities in zip(readable, probabilities, strict=True):
                rows[file] = _prediction_row(model, file, file_probabilities, top_k)
        except tf.errors.InvalidArgumentError:
            # One bad image fails the whole call: find it by predicting one at a time.
            for file, content in readable.items():
                rows[file] = _predict_one(model, file, content, top_k)
    return [rows[file] for file in files]


def _pixel_count_problem(content: bytes) -> str | None:
    """Reads the header only: the decoder would allocate a huge image before failing."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        return f"too many pixels: {error}"
    except Exception:  # noqa: BLE001 - not for Pillow to judge; the model's decoder gives the reason
        return None
    if width * height > MAX_PIXELS:
        return f"too many pixels: {width}x{height} (at most {MAX_PIXELS})"
    return None


def _predict_one(model: ServingModel, file: str, content: bytes, top_k: int) -> dict:
    try:
        probabilities = model.probabilities([content])[0]
    except tf.errors.InvalidArgumentError as error:
        return _error_row(file, f"cannot be decoded: {decoder_reason(error.message)}")
    return _prediction_row(model, file, probabilities, top_k)


def decoder_reason(message: str) -> str:
    """The image decoder's own sentence from a TensorFlow error message, without the graph and node noise."""
    noise = ("Graph execution error", "Detected at node", "<stack traces")
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(noise) and "[[{{" not in line and "[Op:" not in line:
            return line
    return "not a JPEG, PNG, GIF, BMP or WebP image"


def _prediction_row(model: ServingModel, file: str, probabilities: np.ndarray, top_k: int) -> dict:
    scores = model.class_scores(probabilities[np.newaxis])[0]
    order = np.argsort(-scores, kind="stable")
    return {
        "file": file,
        "status": "ok",
        "predicted_label": model.class_names[order[0]],
        "score": round(float(scores[order[0]]), 6),
        "probabilities": model.named_probabilities(probabilities),
        "top_k": [{"label": model.class_names[index], "score": round(float(scores[index]), 6)}
                  for index in order[:top_k]],
    }


def _error_row(file: str, reason: str) -> dict:
    return {"file": file, "status": "error", "error": reason}


def _format_rows(rows: list[dict], output_format: str) -> str:
    if output_format == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        for key in ("probabilities", "top_k"):
            if key in flat:
                flat[key] = json.dumps(flat[key], ensure_ascii=False)
        writer.writerow(flat)
    return buffer.getvalue()
