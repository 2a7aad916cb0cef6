"""``model_info.json``: what a trained model is, for evaluation, export and
incremental training.

The Keras model saved beside it takes float32 RGB pixels in [0, 255] of shape
[batch, image_size, image_size, 3] (the backbone's pixel scaling is a layer
inside the model) and returns logits: ``num_classes`` of them, or a single one
in binary mode (the probability of the positive class, ``class_names[1]``,
is its sigmoid).
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from typing import Any

import kic
from kic import artifacts, storage
from kic.errors import DataError

FORMAT_VERSION = 1
TARBALL_SUFFIXES = (".tar.gz", ".tgz")
# Binary mode's single output is the probability of class_names[1], the
# alphabetically second class (as in the reference algorithm).
POSITIVE_CLASS_INDEX = 1


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    backbone: str
    image_size: int
    interpolation: str
    class_names: tuple[str, ...]
    binary_mode: bool
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped_records: int = 0  # training records that failed to decode and were skipped
    # The short side prepare stored the training images at; serving downscales
    # raw images to it the way prepare did before the resize to image_size.
    # 0: not known (a model info from before it was recorded).
    image_short_side: int = 0
    # The training data's images per class and split (class -> split -> count), so that
    # a later model judged against this one can say what changed in the data since.
    # {}: not known (a model info from before it was recorded).
    images_per_class: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    kic_version: str = kic.__version__
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def positive_class(self) -> str | None:
        """The class whose probability binary mode's single output is."""
        return self.class_names[POSITIVE_CLASS_INDEX] if self.binary_mode else None

    def label_map(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.class_names)}

    def to_json(self) -> str:
        payload = dataclasses.asdict(self)
        payload["class_names"] = list(self.class_names)
        payload["pixel_input"] = "RGB float32 in [0, 255], scaled inside the model"
        payload["output"] = "one logit (sigmoid: positive class)" if self.binary_mode else "logits (softmax)"
        payload["positive_class"] = self.positive_class
        return json.dumps(payload, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        payload = json.loads(text)
        if payload.get("format_version") != FORMAT_VERSION:
            raise DataError(f"model_info format_version {payload.get('format_version')!r} is not supported")
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in payload.items() if key in fields}
        values["class_names"] = tuple(values["class_names"])
        return cls(**values)


def load(model_dir: str) -> ModelInfo:
    return ModelInfo.from_json(storage.read_text(storage.join(model_dir, artifacts.MODEL_INFO)))


def read(uri: str) -> ModelInfo:
    """The info of a kic model wherever it is: a train output or export
    folder, or a ``model.tar.gz`` (only its info member is read), local or
    gs://. Needs no TensorFlow."""
    if not uri.endswith(TARBALL_SUFFIXES):
        return load(uri)
    with storage.local_copy(uri) as local:
        try:
            with tarfile.open(local) as archive:
                member = archive.extractfile(artifacts.MODEL_INFO)
                text = member.read().decode("utf-8") if member else None
        except KeyError:
            text = None
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"{uri} is not a readable tar archive: {error}") from None
    if text is None:
        raise DataError(f"{uri} is not a kic model: it has no {artifacts.MODEL_INFO}")
    return ModelInfo.from_json(text)


def continuation_problem(uri: str) -> str | None:
    """Why training cannot continue from the model at ``uri`` (a folder or
    ``model.tar.gz``, local or remote), or None. It needs kic's model.keras and
    model_info.json: a SavedModel alone (the reference algorithm's package, or
    one exported elsewhere) serves but holds no trainable Keras model. Reads
    names only (a tarball's member list)."""
    wanted = (artifacts.KERAS_MODEL, artifacts.MODEL_INFO)
    if uri.endswith(TARBALL_SUFFIXES):
        with storage.local_copy(uri) as local:
            try:
                with tarfile.open(local) as archive:
                    names = {name.removeprefix("./") for name in archive.getnames()}
            except (tarfile.TarError, OSError, EOFError) as error:
                return f"not a readable tar archive: {error}"
        has = {name: name in names for name in (*wanted, artifacts.LABEL_MAP)}
        saved_model = any(name.endswith("saved_model.pb") for name in names)
    else:
        has = {name: storage.exists(storage.join(uri, name)) for name in (*wanted, artifacts.LABEL_MAP)}
        saved_model = any(storage.exists(storage.join(uri, *parts, "saved_model.pb"))
                          for parts in ((), (artifacts.SAVED_MODEL_VERSION_DIR,)))
    missing = [name for name in wanted if not has[name]]
    if not missing:
        return None
    if saved_model:
        return (f"a SavedModel-only package (no {' or '.join(missing)}; the reference algorithm's model.tar.gz "
                f"holds a SavedModel and {artifacts.LABEL_MAP}): a SavedModel serves but cannot be trained further. "
                "Start from the pretrained backbone instead: leave base_model_uri empty and set backbone to the "
                "earlier job's model_id (its hyperparameters JSON carries over); later runs can continue from "
                f"kic's own model.tar.gz, which holds {artifacts.KERAS_MODEL}")
    return (f"not a kic model (no {' or '.join(missing)}): expected a train output or export folder, or the "
            f"{artifacts.MODEL_TARBALL} kic exported")


def save(model_dir: str, info: ModelInfo) -> None:
    storage.write_text(storage.join(model_dir, artifacts.MODEL_INFO), info.to_json())
    storage.write_text(storage.join(model_dir, artifacts.LABEL_MAP),
                       json.dumps(info.label_map(), indent=2, ensure_ascii=False))
