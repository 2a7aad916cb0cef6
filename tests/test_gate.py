import json
import math

import pytest

from kic import parameters
from kic.evaluation.gate import DEFAULT_MAX_REGRESSION, LOWER_IS_BETTER, Blessing, decide


def test_passes_minimum_without_baseline():
    blessing = decide({"accuracy": 0.92, "log_loss": 0.3}, metric="accuracy", minimum=0.9)
    assert blessing.blessed
    assert blessing.value == 0.92 and blessing.threshold == 0.9 and blessing.baseline_value is None
    assert len(blessing.reasons) == 1
    assert blessing.reasons[0].startswith("Passed") and "accuracy" in blessing.reasons[0]


def test_fails_below_minimum():
    blessing = decide({"accuracy": 0.85}, metric="accuracy", minimum=0.9)
    assert not blessing.blessed
    assert blessing.reasons[0].startswith("Failed") and "below" in blessing.reasons[0]


def test_value_equal_to_minimum_passes():
    assert decide({"auc": 0.8}, metric="auc", minimum=0.8).blessed


def test_fails_on_regression_against_baseline():
    blessing = decide(
        {"accuracy": 0.91}, metric="accuracy", minimum=0.9, baseline_metrics={"accuracy": 0.95}
    )
    assert not blessing.blessed
    assert blessing.baseline_value == 0.95
    assert len(blessing.reasons) == 2
    assert blessing.reasons[0].startswith("Passed")  # the absolute bar is met ...
    assert blessing.reasons[1].startswith("Failed")  # ... but it is worse than the baseline
    assert "0.04" in blessing.reasons[1]


def test_passes_within_allowed_regression():
    # 0.91 - 0.01 is not exactly 0.90 in floating point; the gate must still pass it.
    blessing = decide(
        {"accuracy": 0.90},
        metric="accuracy",
        minimum=0.5,
        baseline_metrics={"accuracy": 0.91},
        max_regression=0.01,
    )
    assert blessing.blessed
    assert all(reason.startswith("Passed") for reason in blessing.reasons)


def test_improvement_over_baseline_passes():
    blessing = decide({"f1": 0.8}, metric="f1", minimum=0.5, baseline_metrics={"f1": 0.7})
    assert blessing.blessed
    assert "no worse" in blessing.reasons[1]


def test_both_rules_failing_reports_both():
    blessing = decide({"accuracy": 0.5}, metric="accuracy", minimum=0.9, baseline_metrics={"accuracy": 0.95})
    assert not blessing.blessed
    assert [reason.split(":")[0] for reason in blessing.reasons] == ["Failed", "Failed"]


def test_lower_is_better_inverts_threshold_and_regression():
    assert "log_loss" in LOWER_IS_BETTER
    good = decide({"log_loss": 0.3}, metric="log_loss", minimum=0.5)
    assert good.blessed and "at most" in good.reasons[0]
    too_high = decide({"log_loss": 0.7}, metric="log_loss", minimum=0.5)
    assert not too_high.blessed and "above" in too_high.reasons[0]

    # A lower loss than the baseline is an improvement, a higher one a regression.
    improved = decide({"log_loss": 0.3}, metric="log_loss", minimum=0.5, baseline_metrics={"log_loss": 0.4})
    assert improved.blessed
    regressed = decide({"log_loss": 0.45}, metric="log_loss", minimum=0.5, baseline_metrics={"log_loss": 0.3})
    assert not regressed.blessed and regressed.reasons[1].startswith("Failed")
    allowed = decide(
        {"log_loss": 0.45},
        metric="log_loss",
        minimum=0.5,
        baseline_metrics={"log_loss": 0.3},
        max_regression=0.2,
    )
    assert allowed.blessed


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ValueError, match=r"'acuracy'.*available: accuracy, log_loss"):
        decide({"accuracy": 0.9, "log_loss": 0.2}, metric="acuracy", minimum=0.5)



def test_a_baseline_without_the_gate_metric_blocks_the_model_without_failing_the_run():
    # A blocked model is a verdict the run reports; an error would fail the scheduled run instead.
    blessing = decide({"auc": 0.9}, metric="auc", minimum=0.5, baseline_metrics={"accuracy": 0.9})
    assert not blessing.blessed and blessing.baseline_value is None
    assert blessing.reasons[1].startswith("Failed: auc cannot be compared with the baseline")


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="max_regression"):
        decide({"accuracy": 0.9}, metric="accuracy", minimum=0.5, max_regression=-0.1)
    with pytest.raises(ValueError, match="not a number"):
        decide({"accuracy": "high"}, metric="accuracy", minimum=0.5)


def test_nan_metric_is_not_blessed_and_json_stays_valid():
    blessing = decide({"accuracy": math.nan}, metric="accuracy", minimum=0.5)
    assert not blessing.blessed
    assert json.loads(blessing.to_json())["value"] is None


def test_json_round_trip():
    blessing = decide({"auc": 0.81}, metric="auc", minimum=0.8, baseline_metrics={"auc": 0.8})
    data = json.loads(blessing.to_json())
    assert data["blessed"] is True and data["metric"] == "auc" and data["baseline_value"] == 0.8
    assert len(data["reasons"]) == 2
    assert Blessing.from_json(blessing.to_json()) == blessing


def test_the_default_tolerance_is_test_split_noise_not_zero():
    # One binomial standard error of accuracy 0.9 on 1,000 test images: sqrt(0.9 * 0.1 / 1000) = 0.0095.
    assert parameters.defaults()["max_regression"] == DEFAULT_MAX_REGRESSION == pytest.approx(0.01)
    assert DEFAULT_MAX_REGRESSION == pytest.approx(math.sqrt(0.9 * 0.1 / 1000), abs=0.001)
    within = decide({"accuracy": 0.905}, metric="accuracy", minimum=0.0, baseline_metrics={"accuracy": 0.91},
                    max_regression=DEFAULT_MAX_REGRESSION)
    beyond = decide({"accuracy": 0.89}, metric="accuracy", minimum=0.0, baseline_metrics={"accuracy": 0.91},
                    max_regression=DEFAULT_MAX_REGRESSION)
    assert within.blessed and not beyond.blessed
    assert beyond.regression == pytest.approx(0.02) and beyond.max_regression == DEFAULT_MAX_REGRESSION


def test_the_first_run_has_no_baseline_and_is_judged_on_the_bar_alone():
    blessing = decide({"accuracy": 0.4}, metric="accuracy", minimum=0.0, max_regression=DEFAULT_MAX_REGRESSION)
    assert blessing.blessed and len(blessing.reasons) == 1
    assert blessing.baseline_value is blessing.regression is blessing.max_regression is None


def test_a_blocked_model_says_not_exported_with_the_numbers_and_the_baseline():
    blessing = decide({"accuracy": 0.5}, metric="accuracy", minimum=0.0, baseline_metrics={"accuracy": 0.9},
                      max_regression=0.01, baseline_model="gs://b/exports/run-1")
    summary = blessing.summary()
    assert summary.startswith("not exported: accuracy = 0.5 is worse than the baseline's 0.9 by 0.4")
    assert "0.01" in summary and summary.endswith("(baseline: gs://b/exports/run-1)")
    assert json.loads(blessing.to_json())["summary"] == summary


def test_a_changed_class_set_is_compared_on_the_shared_classes_and_a_removed_class_blocks():
    compared = dict(metric="accuracy", minimum=0.0, baseline_metrics={"accuracy": 0.8},
                    compared_metrics={"accuracy": 0.85}, added_classes=("hexagon",), removed_classes=("triangle",),
                    compared_on="on the 8 test images of the 2 classes both models know")
    # The whole split's value is the bar's; the regression is judged on the shared images alone.
    blocked = decide({"accuracy": 0.6}, **compared)
    assert not blocked.blessed and blocked.value == 0.6 and blocked.compared_value == 0.85
    assert blocked.reasons[1].startswith("Passed: accuracy = 0.85 on the 8 test images of the 2 classes both")
    assert blocked.reasons[2].startswith("Failed: the baseline's classes triangle are not in the data any more")
    assert "allow_removed_classes=true" in blocked.summary()
    allowed = decide({"accuracy": 0.6}, **compared, allow_removed_classes=True)
    assert allowed.blessed and "allow_removed_classes allows" in allowed.reasons[2]
    assert Blessing.from_json(allowed.to_json()) == allowed
    # Classes that only appeared block nothing.
    added_only = decide({"accuracy": 0.6}, **{**compared, "removed_classes": ()})
    assert added_only.blessed and added_only.added_classes == ("hexagon",)


def test_a_regression_on_the_shared_classes_blocks_even_when_the_whole_split_looks_better():
    blessing = decide({"accuracy": 0.95}, metric="accuracy", minimum=0.0, baseline_metrics={"accuracy": 0.9},
                      compared_metrics={"accuracy": 0.7}, added_classes=("easy",))
    assert not blessing.blessed and blessing.regression == pytest.approx(0.2)
