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
from kic.errors import DataError
from kic.evaluation import gate, report
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
    baseline_model_uri: str = ""
    max_regression: float = 0.0


@dataclasses.dataclass(frozen=True)
class Evaluation:
    split: str
    result: EvaluationResult
    blessing: gate.Blessing
    html: str
    markdown: str


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
    result, misclassified = _evaluate_on(dataset_dir, data, split, model_dir, top_k)

    baseline_scalars = None
    if gate_options.baseline_model_uri:
        log(f"evaluate: baseline {gate_options.baseline_model_uri} on the same split")
        with local_model_dir(gate_options.baseline_model_uri) as baseline_dir:
            baseline_scalars = _evaluate_on(dataset_dir, data, split, baseline_dir, top_k)[0].scalars

    metric = gate_options.metric or _monitored_metric(info)
    blessing = gate.decide(result.scalars, metric=metric, minimum=gate_options.minimum,
                           baseline_metrics=baseline_scalars, max_regression=gate_options.max_regression)
    log(f"evaluate: {'blessed' if blessing.blessed else 'NOT blessed'}: " + " ".join(blessing.reasons))

    history_path = os.path.join(model_dir, artifacts.TRAINING_HISTORY)
    history = json.loads(storage.read_text(history_path)) if storage.exists(history_path) else None
    html = report.render_html(result, title=f"Evaluation of {info.backbone} on the {split} split",
                              blessing=blessing, history=history, misclassified=misclassified)
    markdown = report.render_markdown(result, blessing=blessing)
    return Evaluation(split=split, result=result, blessing=blessing, html=html, markdown=markdown)


def evaluation_split(data: dataset_info.DatasetInfo) -> str:
    """The split a model is judged on: test, or validation when there is no test split."""
    return "test" if data.splits.get("test") and data.splits["test"].num_examples else "validation"


def _monitored_metric(info: model_info.ModelInfo) -> str:
    return info.hyperparameters.get("eval_metric", "accuracy") if info.binary_mode else "accuracy"


def _evaluate_on(dataset_dir: str, data: dataset_info.DatasetInfo, split: str, model_dir: str,
                 top_k: int) -> tuple[EvaluationResult, list[dict]]:
    model, info = load_trained_model(model_dir)
    dataset = input_pipeline.make_dataset(
        data.shard_paths(dataset_dir, split), image_size=info.image_size, interpolation=info.interpolation,
        batch_size=BATCH_SIZE, num_classes=data.num_classes, binary_mode=info.binary_mode, training=False,
        num_examples=data.splits[split].num_examples, with_source=True, short_side=data.image_short_side,
        memory_cache_bytes=0)  # one pass
    labels, probabilities = [], []
    worst: list[tuple[float, int, dict]] = []  # min-heap of the most confident mistakes
    for pixels, batch_labels, _sources in dataset:
        batch_probabilities = logits_to_probabilities(model(pixels, training=False), info.binary_mode)
        batch_scores = class_scores(batch_probabilities, info.binary_mode).numpy()
        batch_labels = batch_labels.numpy()
        labels.append(batch_labels)
        probabilities.append(batch_probabilities.numpy())
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
    probabilities_all = np.concatenate(probabilities)  # [n, 1] in binary mode: P(positive)
    result = evaluate_predictions(np.concatenate(labels), probabilities_all, info.class_names,
                                  binary_mode=info.binary_mode, top_k=top_k)
    misclassified = []
    for _, _, item in sorted(worst, key=lambda entry: -entry[0]):
        pixels = item.pop("pixels")
        misclassified.append({**item, "image": _png(pixels)})
    return result, misclassified


def _png(pixels: tf.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels.numpy(), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
