"""Turns a trained model directory into a serving package.

The package (``output_dir``) holds:

* ``1/``: a SavedModel with the signatures of ``kic.serving.signature``
  (``serving_default``: raw encoded images in; ``pixels``: decoded pixels in);
* ``1/assets.extra/tf_serving_warmup_requests``: TF Serving warm-up records;
* the label map and a model-info JSON (ModelInfo plus package details);
* ``model.keras``, so a package can be the starting point of incremental
  training or the baseline of a later quality gate;
* ``model.tar.gz``: ``1/``, label map, model info, labels.txt and model.keras
  at the archive root (the reference algorithm's layout);
* optionally ``model.tflite`` and its parity report (``kic.serving.tflite``);
* with a prepared dataset (``ExportOptions.examples``), ``serving_parity.json``:
  the served answers on the original files of its evaluation split against
  the evaluate path on the prepared records (``kic.serving.parity``).

Every export is verified (``kic.serving.verify``) before the package is
written, and ``_SUCCESS`` is written last. A systematic skew between the
pixels the served model is given and those evaluation gave it fails the
export after the parity report is written (``parity.ServingSkewError``),
unless ``serving_skew_action`` is warn.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any

import tensorflow as tf

from kic import artifacts, storage
from kic.errors import ParameterError, Problem
from kic.model import loading
from kic.model.model_info import ModelInfo
from kic.serving import contract, parity, tflite, verify, warmup
from kic.serving.signature import ServingModule

PACKAGE_VERSION = 1
# The reference algorithm's archive layout (plus labels.txt and model.keras).
TARBALL_MEMBERS = (artifacts.SAVED_MODEL_VERSION_DIR, artifacts.LABEL_MAP, artifacts.MODEL_INFO,
                   artifacts.LABELS_TXT, artifacts.KERAS_MODEL)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    destination_uri: str = ""  # also publish the package here (local or gs://)
    version: str = ""  # publish under destination_uri/<version>/ and point destination_uri/LATEST at it
    tflite: str = ""
    top_k: int = contract.DEFAULT_TOP_K
    evaluation_metrics: dict | None = None
    examples: str = ""  # a prepared dataset: measure serving parity on its originals ("" = not measured)
    parity_max_files: int = parity.DEFAULT_MAX_FILES
    serving_skew_action: str = contract.SKEW_ACTIONS[0]  # a systematic skew fails the export, or only warns

    def __post_init__(self) -> None:
        problems = contract.export_problems(tflite=self.tflite, top_k=self.top_k,
                                            serving_skew_action=self.serving_skew_action)
        if not isinstance(self.parity_max_files, int) or isinstance(self.parity_max_files, bool) \
                or self.parity_max_files < 1:
            problems.append(Problem("parity_max_files", self.parity_max_files, "a positive int"))
        if problems:
            raise ParameterError(problems)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    package_dir: str
    tarball: str
    max_abs_diff: float
    tflite_max_abs_diff: float | None
    published: str = ""  # where the package was published, if anywhere
    parity: parity.ParityReport | None = None


def export_model(model_dir: str, output_dir: str, options: ExportOptions = ExportOptions(),
                 sample_images: list[bytes] | None = None) -> ExportResult:
    """Writes and verifies the serving package of the model in ``model_dir``
    (a local or gs:// train output).

    ``sample_images`` (encoded bytes) are used for verification and warm-up;
    a few generated JPEGs are used when none are given.
    """
    with loading.local_model_dir(model_dir) as local_model, \
            tempfile.TemporaryDirectory(prefix="kic-export-") as scratch:
        model, info = loading.load_trained_model(local_model)
        samples = list(sample_images) if sample_images else verify.generated_sample_images()
        pixels = verify.decoded_pixels(samples, info)
        reference = verify.keras_probabilities(model, info, pixels)

        package = output_dir if not storage.is_remote(output_dir) else os.path.join(scratch, "package")
        _clear_previous_export(package)
        version_dir = os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR)
        module = ServingModule(model, info, options.top_k)
        tf.saved_model.save(module, version_dir, signatures=module.signatures())
        warmup.write_warmup_requests(os.path.join(version_dir, artifacts.WARMUP_FILE), samples[:1])
        max_abs_diff = verify.verify_saved_model(version_dir, samples, reference)

        tflite_diff = tflite_details = None
        if options.tflite:
            tflite_diff, tflite_details = tflite.export(package, info, options.tflite, pixels, reference)

        parity_report = None
        if options.examples:
            parity_report = parity.measure(version_dir, model, info, options.examples,
                                           max_files=options.parity_max_files)
            parity.write_report(package, parity_report)
            parity_report.check(options.serving_skew_action)

        storage.write_text(os.path.join(package, artifacts.MODEL_INFO),
                           _package_info_json(info, options, tflite_details, parity_report))
        storage.write_text(os.path.join(package, artifacts.LABEL_MAP),
                           json.dumps(info.label_map(), indent=2, ensure_ascii=False))
        storage.write_text(os.path.join(package, artifacts.LABELS_TXT), "\n".join(info.class_names) + "\n")
        shutil.copyfile(os.path.join(local_model, artifacts.KERAS_MODEL), os.path.join(package, artifacts.KERAS_MODEL))
        _write_tarball(package, os.path.join(package, artifacts.MODEL_TARBALL))

        if storage.is_remote(output_dir):
            publish(package, output_dir)
        published = ""
        if options.destination_uri:
            published = publish_version(package, options.destination_uri, options.version)
        storage.write_text(os.path.join(package, artifacts.SUCCESS_MARKER), "")

    return ExportResult(package_dir=output_dir, tarball=storage.join(output_dir, artifacts.MODEL_TARBALL),
                        max_abs_diff=max_abs_diff, tflite_max_abs_diff=tflite_diff, published=published,
                        parity=parity_report)


def _package_info_json(info: ModelInfo, options: ExportOptions, tflite: dict[str, Any] | None,
                       parity_report: parity.ParityReport | None) -> str:
    payload = json.loads(info.to_json())
    payload.update({
        "output": "probabilities, from the SavedModel and the TFLite model alike: "
                  + contract.describe_outputs(info.class_names, info.binary_mode, options.top_k)["probabilities"],
        "package_version": PACKAGE_VERSION,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "evaluation_metrics": options.evaluation_metrics or {},
        "preprocessing": {
            "decode": "JPEG, PNG, GIF (first frame), BMP, WebP (first frame) to RGB; EXIF orientation (JPEG APP1, "
                      "PNG eXIf, WebP EXIF) applied as prepare applies it; transparent pixels composited on white as "
                      "in prepare",
            "resize": (f"first, as prepare did: decoded at no less than {2 * info.image_short_side} px a short "
                       f"side, downscaled (Lanczos, aspect ratio kept) to a short side of {info.image_short_side}; "
                       "then " if info.image_short_side else "")
                      + f"{info.image_size}x{info.image_size}, {info.interpolation}, aspect ratio not kept, "
                        "clipped to [0, 255]",
            "function": "kic.model.preprocessing.decode_and_resize",
            "pixel_scaling": "inside the model",
        },
        "serving": {
            "saved_model_dir": artifacts.SAVED_MODEL_VERSION_DIR,
            "signature": contract.SIGNATURE_NAME,
            "input": f"{contract.INPUT_NAME}: string [batch], raw encoded image bytes",
            "pixels_signature": f"{contract.PIXELS_SIGNATURE_NAME}: float32 [batch, {info.image_size}, "
                                f"{info.image_size}, 3] RGB in [0, 255] -> probabilities "
                                + contract.probabilities_shape(info.num_classes, info.binary_mode),
            "outputs": contract.describe_outputs(info.class_names, info.binary_mode, options.top_k),
            "top_k": min(options.top_k, info.num_classes),
        },
        "tflite": tflite,
        "serving_parity": None if parity_report is None else {
            key: parity_report.to_dict()[key]
            for key in ("split", "num_files", "pixel_mean_diff", "pixel_max_diff", "top1_agreement", "max_abs_diff",
                        "served_accuracy", "evaluated_accuracy", "within_bounds", "clearly_exceeded")},
    })
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays that metrics dictionaries tend to hold."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"evaluation_metrics holds a {type(value).__name__}, which cannot be written as JSON")


def _clear_previous_export(package: str) -> None:
    """Removes what an earlier export to the same directory left, marker first."""
    for name in (artifacts.SUCCESS_MARKER, artifacts.MODEL_TARBALL, artifacts.KERAS_MODEL, artifacts.TFLITE_MODEL,
                 artifacts.TFLITE_PARITY_REPORT, artifacts.SERVING_PARITY_REPORT):
        path = os.path.join(package, name)
        if os.path.isfile(path):
            os.remove(path)
    shutil.rmtree(os.path.join(package, artifacts.SAVED_MODEL_VERSION_DIR), ignore_errors=True)
    os.makedirs(package, exist_ok=True)


def _write_tarball(package: str, tarball: str) -> None:
    def anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in TARBALL_MEMBERS:
            archive.add(os.path.join(package, name), arcname=name, filter=anonymous)
    storage.write_bytes(tarball, buffer.getvalue())


def publish_version(local_dir: str, destination_uri: str, version: str) -> str:
    """Publishes the package under ``destination_uri/<version>/`` and then
    points ``destination_uri/LATEST`` at it (one line: the version's URI),
    last, so what LATEST names is always complete; a scheduled retrain never
    overwrites the model a server may be loading. Without a version, publishes
    into ``destination_uri`` itself. Returns where the package went."""
    if not version:
        publish(local_dir, destination_uri)
        return destination_uri
    versioned = storage.join(destination_uri, version)
    publish(local_dir, versioned)
    storage.write_text(storage.join(destination_uri, artifacts.LATEST_POINTER), versioned + "\n")
    return versioned


def publish(local_dir: str, destination_uri: str) -> None:
    """Copies a finished package to ``destination_uri`` (local, gs:// or s3://), the
    success marker last, so a reader that sees it sees a complete package."""
    marker = storage.join(destination_uri, artifacts.SUCCESS_MARKER)
    # A stale marker would vouch for a half-overwritten package.
    storage.remove_tree(marker)
    storage.makedirs(destination_uri)
    for source in storage.list_files(local_dir):
        relative = os.path.relpath(source, local_dir)
        if relative != artifacts.SUCCESS_MARKER:
            storage.copy_file(source, storage.join(destination_uri, *relative.split(os.sep)))
    storage.write_text(marker, "")
