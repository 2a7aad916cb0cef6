import json
import math

import pytest

from kic.evaluation.gate import LOWER_IS_BETTER, Blessing, decide


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
    with pytest.raises(ValueError, match="baseline"):
        decide({"auc": 0.9}, metric="auc", minimum=0.5, baseline_metrics={"accuracy": 0.9})


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
