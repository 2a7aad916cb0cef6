"""Every metric checked against scikit-learn (a test-only dependency) to 1e-6."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from kic.evaluation.metrics import EvaluationResult, evaluate_predictions

TOL = 1e-6


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _multiclass_data(seed=0, n=300, k=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 1.0  # better than chance, not perfect
    return labels, _softmax(logits)


def _binary_data(seed=1, n=400, decimals=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    scores = np.clip(rng.normal(loc=0.35 + 0.3 * labels, scale=0.2), 0.0, 1.0)
    if decimals is not None:
        scores = np.round(scores, decimals)  # many tied scores
    return labels, scores


def _assert_classification_metrics_match(result, labels, y_pred, proba_2d, num_classes):
    ids = list(range(num_classes))
    s = result.scalars
    assert s["num_examples"] == len(labels)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(labels, y_pred), abs=TOL)
    assert result.confusion_matrix == skm.confusion_matrix(labels, y_pred, labels=ids).tolist()

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, y_pred, labels=ids, zero_division=0
    )
    for i, row in enumerate(result.per_class):
        assert row["class"] == result.class_names[i]
        assert row["precision"] == pytest.approx(precision[i], abs=TOL)
        assert row["recall"] == pytest.approx(recall[i], abs=TOL)
        assert row["f1"] == pytest.approx(f1[i], abs=TOL)
        assert row["support"] == support[i]
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, y_pred, labels=ids, average=average, zero_division=0
        )
        assert s[f"{average}_precision"] == pytest.approx(p, abs=TOL)
        assert s[f"{average}_recall"] == pytest.approx(r, abs=TOL)
        assert s[f"{average}_f1"] == pytest.approx(f, abs=TOL)
    assert s["log_loss"] == pytest.approx(skm.log_loss(labels, proba_2d, labels=ids), abs=TOL)


def _assert_json_round_trip(result):
    text = result.to_json()
    assert "NaN" not in text and "Infinity" not in text
    assert EvaluationResult.from_json(text) == result


# --- multi-class -----------------------------------------------------------


def test_multiclass_matches_sklearn():
    labels, proba = _multiclass_data()
    names = ("cat", "dog", "fox", "owl")
    result = evaluate_predictions(labels, proba, names, binary_mode=False, top_k=2)

    _assert_classification_metrics_match(result, labels, proba.argmax(axis=1), proba, 4)
    assert result.scalars["top_2_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, proba, k=2, labels=[0, 1, 2, 3]), abs=TOL
    )
    assert 0.25 < result.scalars["accuracy"] < 1.0  # the data is informative but imperfect
    assert result.class_names == names
    assert result.roc_curve is None and result.pr_curve is None
    assert "auc" not in result.scalars and "true_positives" not in result.scalars
    _assert_json_round_trip(result)


def test_top_k_only_reported_when_there_are_more_classes_than_k():
    labels, proba = _multiclass_data(k=4)
    result = evaluate_predictions(labels, proba, list("abcd"), binary_mode=False, top_k=5)
    assert not any(key.startswith("top_") for key in result.scalars)

    labels, proba = _multiclass_data(k=7, n=500)
    result = evaluate_predictions(labels, proba, list("abcdefg"), binary_mode=False)
    assert result.scalars["top_5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, proba, k=5, labels=list(range(7))), abs=TOL
    )


def test_top_k_with_tied_scores_matches_sklearn():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, size=200)
    # Scores from a handful of values so many rows contain ties around rank k.
    raw = rng.integers(1, 4, size=(200, 6)).astype(np.float64)
    proba = raw / raw.sum(axis=1, keepdims=True)
    result = evaluate_predictions(labels, proba, list("abcdef"), binary_mode=False, top_k=2)
    assert result.scalars["top_2_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, proba, k=2, labels=list(range(6))), abs=TOL
    )
    _assert_classification_metrics_match(result, labels, proba.argmax(axis=1), proba, 6)


def test_class_never_predicted_nor_present_gives_zero_not_nan():
    labels, proba = _multiclass_data(n=200, k=4)
    # Class 3 is never predicted: give it no probability mass at all.
    proba[:, 3] = 0.0
    proba /= proba.sum(axis=1, keepdims=True)
    labels = np.where(labels == 2, 0, labels)  # class 2 has no support
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the missing class
        result = evaluate_predictions(labels, proba, ["a", "b", "c", "d"], binary_mode=False, top_k=2)
        _assert_classification_metrics_match(result, labels, proba.argmax(axis=1), proba, 4)
    never_predicted = result.per_class[3]
    assert never_predicted["precision"] == 0.0 and never_predicted["f1"] == 0.0
    assert never_predicted["support"] > 0
    assert result.per_class[2]["support"] == 0 and result.per_class[2]["recall"] == 0.0
    # Zero probability on a true class is clipped, so the loss is large but finite.
    assert np.isfinite(result.scalars["log_loss"]) and result.scalars["log_loss"] > 10
    _assert_json_round_trip(result)


# --- binary ----------------------------------------------------------------


def _best_f1_reference(labels, scores):
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # drop the point without a threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # Ties (up to rounding) go to the highest threshold.
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)[-1]
    return f1[best], thresholds[best], precision[best], recall[best]


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct-scores", "tied-scores"])
def test_binary_matches_sklearn(decimals):
    labels, scores = _binary_data(decimals=decimals)
    result = evaluate_predictions(labels, scores, ["negative", "positive"], binary_mode=True)
    s = result.scalars
    y_pred = (scores > 0.5).astype(int)

    proba_2d = np.stack([1 - scores, scores], axis=1)
    _assert_classification_metrics_match(result, labels, y_pred, proba_2d, 2)
    assert s["log_loss"] == pytest.approx(skm.log_loss(labels, scores), abs=TOL)
    assert s["precision"] == pytest.approx(skm.precision_score(labels, y_pred, zero_division=0), abs=TOL)
    assert s["recall"] == pytest.approx(skm.recall_score(labels, y_pred, zero_division=0), abs=TOL)
    assert s["f1"] == pytest.approx(skm.f1_score(labels, y_pred, zero_division=0), abs=TOL)
    tn, fp, fn, tp = skm.confusion_matrix(labels, y_pred).ravel()
    assert (s["true_negatives"], s["false_positives"], s["false_negatives"], s["true_positives"]) == (
        tn, fp, fn, tp,
    )
    assert s["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=TOL)
    assert s["prc"] == pytest.approx(skm.average_precision_score(labels, scores), abs=TOL)

    best_f1, best_threshold, best_precision, best_recall = _best_f1_reference(labels, scores)
    assert s["best_f1"] == pytest.approx(best_f1, abs=TOL)
    assert s["best_f1_threshold"] == pytest.approx(best_threshold, abs=TOL)
    assert s["precision_at_best_f1"] == pytest.approx(best_precision, abs=TOL)
    assert s["recall_at_best_f1"] == pytest.approx(best_recall, abs=TOL)
    assert s["best_f1"] >= s["f1"] - TOL  # 0.5 is one of the thresholds it could have picked

    _assert_json_round_trip(result)


def test_binary_curves_match_sklearn_when_short():
    labels, scores = _binary_data(n=60)
    result = evaluate_predictions(labels, scores, ["no", "yes"], binary_mode=True, max_curve_points=1000)

    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    assert np.isinf(thresholds[0])  # sklearn's corner point, which we replace with a finite one
    roc = result.roc_curve
    np.testing.assert_allclose(roc["fpr"], fpr, atol=TOL)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=TOL)
    np.testing.assert_allclose(roc["thresholds"][1:], thresholds[1:], atol=TOL)
    assert roc["thresholds"][0] > scores.max()
    assert np.isfinite(roc["thresholds"][0])

    precision, recall, thresholds = skm.precision_recall_curve(labels, scores, drop_intermediate=True)
    pr = result.pr_curve
    np.testing.assert_allclose(pr["precision"], precision[:-1], atol=TOL)
    np.testing.assert_allclose(pr["recall"], recall[:-1], atol=TOL)
    np.testing.assert_allclose(pr["thresholds"], thresholds, atol=TOL)


def test_binary_curves_are_downsampled_keeping_endpoints_and_order():
    labels, scores = _binary_data(n=3000, seed=7)
    result = evaluate_predictions(labels, scores, ["no", "yes"], binary_mode=True, max_curve_points=50)
    roc, pr = result.roc_curve, result.pr_curve
    for curve in (roc, pr):
        lengths = {len(values) for values in curve.values()}
        assert len(lengths) == 1 and 2 <= lengths.pop() <= 50
        assert all(np.isfinite(curve["thresholds"]))
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.all(np.diff(roc["thresholds"]) < 0)
    assert np.all(np.diff(pr["recall"]) <= 0) and np.all(np.diff(pr["thresholds"]) > 0)
    assert pr["recall"][0] == 1.0
    # The scalar AUC comes from the full curve, not the thinned one.
    assert result.scalars["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=TOL)


@pytest.mark.parametrize("shape", ["flat", "column", "two-columns"])
def test_binary_accepts_all_probability_shapes(shape):
    labels, scores = _binary_data(n=80)
    given = {
        "flat": scores,
        "column": scores[:, None],
        "two-columns": np.stack([1 - scores, scores], axis=1),
    }[shape]
    result = evaluate_predictions(labels, given, ["a", "b"], binary_mode=True)
    assert result.scalars["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=TOL)


def test_binary_with_one_class_present_omits_auc_and_curves():
    labels = np.zeros(20, dtype=int)
    scores = np.linspace(0.05, 0.95, 20)
    result = evaluate_predictions(labels, scores, ["a", "b"], binary_mode=True)
    s = result.scalars
    assert "auc" not in s and "prc" not in s
    assert result.roc_curve is None and result.pr_curve is None
    assert s["best_f1"] == 0.0 and s["recall"] == 0.0 and s["precision"] == 0.0
    assert s["false_positives"] == 10 and s["true_negatives"] == 10
    assert s["accuracy"] == pytest.approx(0.5)
    _assert_json_round_trip(result)


# --- input errors ------------------------------------------------------------


def test_clear_errors_for_bad_input():
    labels, proba = _multiclass_data(n=10)
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(np.minimum(labels, 2), proba, ["a", "b", "c"], binary_mode=False)
    with pytest.raises(ValueError, match="labels must lie in"):
        evaluate_predictions(labels + 1, proba, list("abcd"), binary_mode=False)
    with pytest.raises(ValueError, match="not logits"):
        evaluate_predictions(labels, proba * 10 - 3, list("abcd"), binary_mode=False)
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate_predictions(labels, proba * 0.5, list("abcd"), binary_mode=False)
    with pytest.raises(ValueError, match="exactly 2 class names"):
        evaluate_predictions(labels, proba[:, 0], list("abc"), binary_mode=True)
    with pytest.raises(ValueError, match="empty"):
        evaluate_predictions([], np.zeros((0, 4)), list("abcd"), binary_mode=False)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_predictions([0, 1], [np.nan, 0.5], ["a", "b"], binary_mode=True)


def test_to_json_is_plain_json():
    labels, scores = _binary_data(n=50)
    data = json.loads(evaluate_predictions(labels, scores, ["a", "b"], binary_mode=True).to_json())
    assert set(data) == {"scalars", "class_names", "confusion_matrix", "per_class", "roc_curve", "pr_curve"}
    assert data["class_names"] == ["a", "b"]
    assert isinstance(data["scalars"]["true_positives"], int)


def test_binary_with_all_scores_equal():
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.full(5, 0.7)
    result = evaluate_predictions(labels, scores, ["a", "b"], binary_mode=True)
    assert result.scalars["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=TOL)
    assert result.scalars["prc"] == pytest.approx(skm.average_precision_score(labels, scores), abs=TOL)
    assert result.roc_curve["fpr"] == [0.0, 1.0] and result.roc_curve["tpr"] == [0.0, 1.0]
    assert result.pr_curve == {"precision": [0.6], "recall": [1.0], "thresholds": [0.7]}
    assert result.scalars["best_f1_threshold"] == 0.7
