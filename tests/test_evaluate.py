"""Evaluation of a trained model on prepared data, end to end in process: the
shared tiny model on the shared prepared dataset (conftest.py)."""

import numpy as np
import pytest
import tensorflow as tf

from kic.data import dataset_info, schema
from kic.errors import DataError
from kic.evaluation.evaluate import GateOptions, evaluate_model
from kic.model import preprocessing
from kic.model.loading import load_trained_model

QUIET = dict(log=lambda _message: None)


def _predictions_by_hand(prepared: str, model_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of every record of ``split``, one image at a time."""
    model, info = load_trained_model(model_dir)
    data = dataset_info.load(prepared)
    labels, probabilities = [], []
    for record in tf.data.TFRecordDataset(data.shard_paths(prepared, split)):
        example = tf.io.parse_single_example(record, schema.feature_spec())
        pixels = preprocessing.decode_and_resize(example[schema.IMAGE_ENCODED], info.image_size, info.interpolation)
        logits = model(pixels[tf.newaxis], training=False)[0].numpy()
        probabilities.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
        labels.append(int(example[schema.LABEL]))
    return np.array(labels), np.array(probabilities)


@pytest.fixture(scope="module")
def evaluation(prepared, trained):
    return evaluate_model(prepared, trained.model_dir, top_k=2, **QUIET)


def test_metrics_are_those_of_the_models_own_predictions_on_the_test_split(prepared, trained, evaluation):
    labels, probabilities = _predictions_by_hand(prepared, trained.model_dir, "test")
    assert evaluation.split == "test" and evaluation.result.scalars["num_examples"] == len(labels) == 12
    predicted = probabilities.argmax(axis=1)
    assert evaluation.result.scalars["accuracy"] == pytest.approx(np.mean(predicted == labels))
    top_2 = np.argsort(-probabilities, axis=1)[:, :2]
    assert evaluation.result.scalars["top_2_accuracy"] == pytest.approx(np.mean([label in row for label, row in
                                                                                 zip(labels, top_2, strict=True)]))
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    assert evaluation.result.confusion_matrix == confusion.tolist()


def test_report_and_summary_name_the_split_and_the_verdict(evaluation):
    assert "test split" in evaluation.html and "tiny_test_net" in evaluation.html
    assert evaluation.blessing.blessed and "Passed" in evaluation.markdown


def test_a_baseline_is_evaluated_on_the_same_images(prepared, trained, exported, evaluation):
    # The exported package of the same model: same images, same numbers, no regression.
    outcome = evaluate_model(prepared, trained.model_dir, top_k=2,
                             gate_options=GateOptions(metric="macro_f1", baseline_model_uri=exported.tarball),
                             **QUIET)
    blessing = outcome.blessing
    assert blessing.metric == "macro_f1" and blessing.baseline_value == blessing.value
    assert blessing.value == pytest.approx(evaluation.result.scalars["macro_f1"])
    assert blessing.blessed and any("no worse than the baseline" in reason for reason in blessing.reasons)


def test_a_model_for_other_classes_is_refused(prepared, trained, tmp_path):
    import json
    import shutil

    from kic import artifacts

    other = tmp_path / "model"
    shutil.copytree(trained.model_dir, other)
    info = json.loads((other / artifacts.MODEL_INFO).read_text())
    info["class_names"] = ["cat", "dog", "mouse"]
    (other / artifacts.MODEL_INFO).write_text(json.dumps(info))
    with pytest.raises(DataError, match="differ from the dataset's"):
        evaluate_model(prepared, str(other), **QUIET)


def test_binary_mode_is_evaluated_on_the_positive_class_probability(tmp_path):
    """Binary mode's single output, P(positive), is what the metrics are computed from."""
    import dataclasses
    import shutil

    from test_export import build_model_dir

    from kic.data.prepare import PrepareOptions, prepare_dataset
    from kic.demo_data import write_demo_dataset
    from kic.model import model_info

    write_demo_dataset(str(tmp_path / "images"), images_per_class=8, size=40)
    shutil.rmtree(tmp_path / "images" / "triangle")
    prepare_dataset(PrepareOptions(source=str(tmp_path / "images"), output_dir=str(tmp_path / "prepared"),
                                   validation_fraction=0.25, test_fraction=0.25, image_short_side=40, workers=1))
    model_dir = build_model_dir(str(tmp_path / "model"), binary=True, seed=3)
    info = model_info.load(model_dir)
    model_info.save(model_dir, dataclasses.replace(info, class_names=("circle", "square")))

    outcome = evaluate_model(str(tmp_path / "prepared"), model_dir, **QUIET)
    model, info = load_trained_model(model_dir)
    data = dataset_info.load(str(tmp_path / "prepared"))
    labels, positive = [], []
    for record in tf.data.TFRecordDataset(data.shard_paths(str(tmp_path / "prepared"), "test")):
        example = tf.io.parse_single_example(record, schema.feature_spec())
        pixels = preprocessing.decode_and_resize(example[schema.IMAGE_ENCODED], info.image_size, info.interpolation)
        positive.append(float(tf.sigmoid(model(pixels[tf.newaxis], training=False))[0, 0]))
        labels.append(int(example[schema.LABEL]))
    labels, positive = np.array(labels), np.array(positive)
    assert outcome.result.scalars["accuracy"] == pytest.approx(np.mean((positive > 0.5) == labels))
    assert outcome.result.scalars["true_positives"] == int(np.sum((positive > 0.5) & (labels == 1)))
