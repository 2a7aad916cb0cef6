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


# ------------------------------------------------------------ against a baseline
def _copy_with_info(model_dir: str, destination, **changes) -> str:
    """A copy of a model whose model_info.json says otherwise: same weights, other class names or data."""
    import dataclasses
    import shutil

    from kic.model import model_info

    shutil.copytree(model_dir, destination)
    model_info.save(str(destination), dataclasses.replace(model_info.load(str(destination)), **changes))
    return str(destination)


@pytest.fixture(scope="module")
def untrained(prepared, tmp_path_factory) -> str:
    """A model at its random initialisation, for the demo data's classes: clearly worse than ``trained``."""
    from test_export import build_model_dir

    directory = build_model_dir(str(tmp_path_factory.mktemp("untrained") / "raw"), seed=5)
    classes = dataset_info.load(prepared).class_names
    return _copy_with_info(directory, tmp_path_factory.mktemp("untrained-model") / "model", class_names=classes)


def test_a_model_worse_than_its_baseline_is_not_blessed_and_the_report_says_why(prepared, trained, untrained,
                                                                              evaluation):
    outcome = evaluate_model(prepared, untrained, top_k=2,
                             gate_options=GateOptions(baseline_model_uri=trained.model_dir), **QUIET)
    blessing, comparison = outcome.blessing, outcome.comparison
    baseline_accuracy = evaluation.result.scalars["accuracy"]
    assert comparison.baseline_scalars["accuracy"] == pytest.approx(baseline_accuracy)
    assert blessing.baseline_value == pytest.approx(baseline_accuracy)
    assert blessing.regression == pytest.approx(baseline_accuracy - outcome.result.scalars["accuracy"])
    assert blessing.regression > blessing.max_regression == 0.01
    assert not blessing.blessed and blessing.summary().startswith("not exported: accuracy = ")
    assert comparison.compared_on == "on the same 12 test images" and not comparison.added_classes
    # Side by side: headline metrics, per-class F1 with the biggest drop first, the data then and now.
    headline = {name: (new, old, change) for name, new, old, change in comparison.headline()}
    assert headline["accuracy"] == pytest.approx((outcome.result.scalars["accuracy"], baseline_accuracy,
                                                  outcome.result.scalars["accuracy"] - baseline_accuracy))
    changes = [row["change"] for row in comparison.per_class_f1()]
    assert changes == sorted(changes) and len(changes) == 3
    assert comparison.data_changes.known and {row["change"] for row in comparison.data_changes.rows} == {0}
    assert comparison.ui_metrics()["baseline_accuracy"] == pytest.approx(baseline_accuracy)
    for text in (outcome.html, outcome.markdown):
        assert "Against the baseline" in text and trained.model_dir in text and "Data since the baseline" in text
    assert "**Not exported: accuracy = " in outcome.markdown


def test_none_turns_the_comparison_off(prepared, untrained):
    outcome = evaluate_model(prepared, untrained, gate_options=GateOptions(baseline_model_uri="none"), **QUIET)
    assert outcome.comparison is None and outcome.blessing.blessed and len(outcome.blessing.reasons) == 1


def test_a_changed_class_set_is_compared_on_the_classes_both_know(prepared, trained, tmp_path):
    """The baseline knew circle, hexagon and square; the data now has circle, square and triangle. Both
    models are judged on the circle and square test images, each by its own arg-max over every class it
    knows; hexagon vanished (blocking unless allowed), triangle appeared, and the data report's counts are
    set against those the baseline's model info recorded."""
    baseline_classes = ("circle", "hexagon", "square")
    recorded = {"circle": {"train": 6, "test": 4}, "hexagon": {"train": 5}, "square": {"train": 8, "validation": 4,
                                                                                       "test": 4}}
    baseline = _copy_with_info(trained.model_dir, tmp_path / "baseline", class_names=baseline_classes,
                               images_per_class=recorded)
    outcome = evaluate_model(prepared, trained.model_dir, top_k=2,
                             gate_options=GateOptions(baseline_model_uri=baseline), **QUIET)
    comparison, blessing = outcome.comparison, outcome.blessing
    assert comparison.added_classes == ("triangle",) and comparison.removed_classes == ("hexagon",)
    assert comparison.compared_on == "on the 8 test images of the 2 classes both models know (circle, square)"

    labels, probabilities = _predictions_by_hand(prepared, trained.model_dir, "test")
    data_classes = np.array(dataset_info.load(prepared).class_names)
    true, shared = data_classes[labels], np.isin(data_classes[labels], ["circle", "square"])
    new_accuracy = np.mean(data_classes[probabilities.argmax(axis=1)][shared] == true[shared])
    old_accuracy = np.mean(np.array(baseline_classes)[probabilities.argmax(axis=1)][shared] == true[shared])
    assert comparison.new_scalars["accuracy"] == pytest.approx(new_accuracy)
    assert comparison.baseline_scalars["accuracy"] == pytest.approx(old_accuracy)
    assert blessing.compared_value == pytest.approx(new_accuracy) and blessing.value == outcome.result.scalars[
        "accuracy"]
    assert not blessing.blessed and "hexagon are not in the data any more" in blessing.summary()
    changes = {row["class"]: (row["baseline"], row["now"], row["change"]) for row in comparison.data_changes.rows}
    assert changes == {"circle": (10, 16, 6), "square": (16, 16, 0), "triangle": (0, 16, 16), "hexagon": (5, 0, -5)}
    assert "Classes of the baseline gone from the data: hexagon" in outcome.html
    assert "Classes new since the baseline (it never saw them): triangle" in outcome.markdown

    allowed = evaluate_model(prepared, trained.model_dir, top_k=2, gate_options=GateOptions(
        baseline_model_uri=baseline, allow_removed_classes=True, max_regression=1.0), **QUIET)
    assert allowed.blessing.blessed
