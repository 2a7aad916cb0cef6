"""Evaluation of a trained model on a prepared split, and the quality gate.

The model runs on the same tf.data input as training (same decode and resize),
in inference mode; numbers come from ``kic.evaluation.metrics``.
"""

from __future__ import annotations

import dataclasses
import heapq
import io
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from kic import artifacts, storage
from kic.data import dataset_info, input_pipeline
from kic.data.dataset_info import evaluation_split
from kic.errors import DataError
from kic.evaluation import baseline, gate, report
from kic.evaluation.comparison import Comparison, compare
from kic.evaluation.metrics import EvaluationResult, evaluate_predictions
from kic.model import model_info
from kic.model.loading import class_scores, load_trained_model, local_model_dir, logits_to_probabilities
from kic.serving.contract import DEFAULT_TOP_K

MISCLASSIFIED_SHOWN = 16
BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class GateOptions:
    metric: str = ""  # empty: the monitored metric of training
    minimum: float = 0.0
    # A model to compare with; "" or "none": none. (The pipeline's default, what
    # export_uri/LATEST names, is resolved by the snapshot step: kic.evaluation.baseline.)
    baseline_model_uri: str = ""
    max_regression: float = gate.DEFAULT_MAX_REGRESSION
    allow_removed_classes: bool = False


@dataclasses.dataclass(frozen=True)
class Evaluation:
    split: str
    result: EvaluationResult
    blessing: gate.Blessing
    html: str
    markdown: str
    comparison: Comparison | None = None


@dataclasses.dataclass(frozen=True)
class _Predictions:
    labels: np.ndarray  # indices into the data's classes
    probabilities: np.ndarray  # the model's output: [n, classes], or [n, 1] in binary mode
    scores: np.ndarray  # one per class the model knows: [n, classes]
    misclassified: list[dict]


def evaluate_model(dataset_dir: str, model_dir: str, *, top_k: int = DEFAULT_TOP_K,
                   gate_options: GateOptions = GateOptions(), log: Callable[[str], None] = print) -> Evaluation:
    """Evaluates the model (a train output or package, local or gs://) on the
    test split of the prepared dataset (validation when there is none), and
    decides whether it is good enough to export."""
    with local_model_dir(model_dir) as local:
        return _evaluate(dataset_dir, local, top_k, gate_options, log)


def _evaluate(dataset_dir: str, model_dir: str, top_k: int, gate_options: GateOptions,
              log: Callable[[str], None]) -> Evaluation:
    data = dataset_info.load(dataset_dir)
    info = model_info.load(model_dir)
    if tuple(info.class_names) != tuple(data.class_names):
        raise DataError(f"the model's classes {list(info.class_names)} differ from the dataset's "
                        f"{list(data.class_names)}")
    split = evaluation_split(data)
    log(f"evaluate: {data.splits[split].num_examples} images of the {split} split")
    predicted = _predict(dataset_dir, data, split, model_dir, keep_mistakes=True)
    result = evaluate_predictions(predicted.labels, predicted.probabilities, info.class_names,
                                  binary_mode=info.binary_mode, top_k=top_k)

    comparison = None
    if gate_options.baseline_model_uri and not baseline.is_off(gate_options.baseline_model_uri):
        log(f"evaluate: baseline {gate_options.baseline_model_uri} on the same split")
        comparison = _compare(dataset_dir, data, split, predicted, result, gate_options.baseline_model_uri, top_k)
        for name, new, old, change in comparison.headline():
            log(f"evaluate: {name} {new:.4f}, baseline {old:.4f} ({change:+.4f}) {comparison.compared_on}")

    metric = gate_options.metric or _monitored_metric(info)
    blessing = gate.decide(
        result.scalars, metric=metric, minimum=gate_options.minimum, max_regression=gate_options.max_regression,
        baseline_metrics=comparison.baseline_scalars if comparison else None,
        compared_metrics=comparison.new_scalars if comparison else None,
        baseline_model=comparison.baseline_model if comparison else "",
        added_classes=comparison.added_classes if comparison else (),
        removed_classes=comparison.removed_classes if comparison else (),
        allow_removed_classes=gate_options.allow_removed_classes,
        compared_on=comparison.compared_on if comparison else "")
    log(f"evaluate: {'blessed' if blessing.blessed else 'NOT blessed'}: " + " ".join(blessing.reasons))

    history_path = os.path.join(model_dir, artifacts.TRAINING_HISTORY)
    history = json.loads(storage.read_text(history_path)) if storage.exists(history_path) else None
    html = report.render_html(result, title=f"Evaluation of {info.backbone} on the {split} split",
                              blessing=blessing, history=history, misclassified=predicted.misclassified,
                              comparison=comparison)
    markdown = report.render_markdown(result, blessing=blessing, comparison=comparison)
    return Evaluation(split=split, result=result, blessing=blessing, html=html, markdown=markdown,
                      comparison=comparison)


def _compare(dataset_dir: str, data: dataset_info.DatasetInfo, split: str, predicted: _Predictions,
             result: EvaluationResult, baseline_uri: str, top_k: int) -> Comparison:
    """The baseline on the very images the new model was evaluated on."""
    with local_model_dir(baseline_uri) as baseline_dir:
        baseline_info = model_info.load(baseline_dir)
        old = _predict(dataset_dir, data, split, baseline_dir, keep_mistakes=False)
    if not np.array_equal(old.labels, predicted.labels):
        raise RuntimeError("the baseline was evaluated on other images than the new model; this is a bug in kic")
    same_classes = tuple(baseline_info.class_names) == tuple(data.class_names)
    baseline_result = evaluate_predictions(old.labels, old.probabilities, baseline_info.class_names,
                                           binary_mode=baseline_info.binary_mode, top_k=top_k) if same_classes else None
    return compare(labels=predicted.labels, class_names=data.class_names, new_result=result,
                   new_scores=predicted.scores, baseline_result=baseline_result, baseline_scores=old.scores,
                   baseline_class_names=baseline_info.class_names, baseline_model=baseline_uri, split=split,
                   top_k=top_k, data_now=dataset_info.images_per_class(dataset_dir),
                   data_baseline=baseline_info.images_per_class)


def _monitored_metric(info: model_info.ModelInfo) -> str:
    return info.hyperparameters.get("eval_metric", "accuracy") if info.binary_mode else "accuracy"


def _predict(dataset_dir: str, data: dataset_info.DatasetInfo, split: str, model_dir: str, *,
             keep_mistakes: bool) -> _Predictions:
    """The model's answers on every image of ``split``, in the split's order
    (the same for every model); with ``keep_mistakes``, the most confident
    mistakes' images (the model must know the data's classes)."""
    model, info = load_trained_model(model_dir)
    dataset = input_pipeline.evaluation_records(
        data.shard_paths(dataset_dir, split), image_size=info.image_size, interpolation=info.interpolation,
        short_side=data.image_short_side, batch_size=BATCH_SIZE)
    labels, probabilities, scores = [], [], []
    worst: list[tuple[float, int, dict]] = []  # min-heap of the most confident mistakes
    for pixels, batch_labels, _sources in dataset:
        batch_probabilities = logits_to_probabilities(model(pixels, training=False), info.binary_mode)
        batch_scores = class_scores(batch_probabilities, info.binary_mode).numpy()
        batch_labels = batch_labels.numpy()
        labels.append(batch_labels)
        probabilities.append(batch_probabilities.numpy())
        scores.append(batch_scores)
        if not keep_mistakes:
            continue
        predicted = batch_scores.argmax(axis=1)
        for row in np.flatnonzero(predicted != batch_labels):
            confidence = float(batch_scores[row, predicted[row]])
            entry = (confidence, len(labels) * BATCH_SIZE + int(row), {
                "pixels": pixels[row], "true": info.class_names[batch_labels[row]],
                "predicted": info.class_names[predicted[row]], "confidence": confidence})
            if len(worst) < MISCLASSIFIED_SHOWN:
                heapq.heappush(worst, entry)
            elif confidence > worst[0][0]:
                heapq.heapreplace(worst, entry)
    misclassified = []
    for _, _, item in sorted(worst, key=lambda entry: -entry[0]):
        pixels = item.pop("pixels")
        misclassified.append({**item, "image": _png(pixels)})
    # [n, 1] in binary mode: P(positive)
    return _Predictions(labels=np.concatenate(labels), probabilities=np.concatenate(probabilities),
                        scores=np.concatenate(scores), misclassified=misclassified)


def _png(pixels: tf.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels.numpy(), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
