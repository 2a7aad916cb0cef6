"""Cron expressions in each scheduler's dialect (kic schedule checks them before sending)."""

import pytest

from kic.orchestration import cron


@pytest.mark.parametrize("expression", ["0 0 3 * * *", "0 */15 8-18 * * MON-FRI", "30 0 3 ? * sun",
                                        "0 0 0 1,15 JAN-JUN ?", "  0  0 3 * * *  "])
def test_kubeflow_takes_six_fields_seconds_first(expression):
    assert cron.problems(expression, cron.KUBEFLOW) == []


@pytest.mark.parametrize("expression", ["0 3 * * *", "TZ=Europe/Amsterdam 0 3 * * *", "CRON_TZ=America/New_York "
                                        "30 2 1 jan *", "*/10 * * * 1-5", "0 0 * * 7"])
def test_vertex_takes_five_fields_after_an_optional_time_zone(expression):
    assert cron.problems(expression, cron.VERTEX) == []


def test_a_unix_cron_on_kubeflow_is_an_error_that_shows_the_six_field_form():
    # robfig/cron would read it as SECOND MINUTE HOUR DAY MONTH: minute 3 of every hour.
    [problem] = cron.problems("0 3 * * *", cron.KUBEFLOW)
    assert problem.name == "--cron" and problem.value == "0 3 * * *"
    assert "got 5 fields" in problem.expected and "'0 0 3 * * *'" in problem.expected
    assert "SECOND MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK" in problem.expected


def test_a_seconds_cron_on_vertex_is_an_error_that_shows_the_five_field_form():
    [problem] = cron.problems("0 0 3 * * *", cron.VERTEX)
    assert "got 6 fields" in problem.expected and "without them: '0 3 * * *'" in problem.expected
    assert "MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK" in problem.expected and "TZ=" in problem.expected


def test_time_zones_are_vertex_only_and_must_exist():
    [problem] = cron.problems("TZ=Europe/Amsterdam 0 0 3 * * *", cron.KUBEFLOW)
    assert "takes no time zone" in problem.expected
    [problem] = cron.problems("TZ=Mars/Olympus_Mons 0 3 * * *", cron.VERTEX)
    assert "unknown time zone 'Mars/Olympus_Mons'" in problem.expected


@pytest.mark.parametrize("expression, reason", [
    ("0 60 3 * * *", "minute '60' is out of range (0-59)"),
    ("0 0 18-9 * * *", "hour range '18-9' runs backwards"),
    ("0 0 3 * 13 *", "month '13' is out of range (1-12 or JAN-DEC)"),
    ("0 0 3 * * FUN", "day of week 'FUN' is out of range (0-6 or SUN-SAT)"),
    ("0 */0 * * * *", "minute step 0 is not between 1 and 59"),
    ("0 0 3 L * *", "day of month 'L' is out of range"),
    ("0 0 3 * * 1#2", "day of week '1#2' is not a value"),
])
def test_each_field_is_checked_against_its_range(expression, reason):
    [problem] = cron.problems(expression, cron.KUBEFLOW)
    assert reason in problem.expected


def test_any_day_is_kubeflow_only():
    [problem] = cron.problems("0 3 ? * *", cron.VERTEX)
    assert "day of month cannot be '?'" in problem.expected
