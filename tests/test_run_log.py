"""`kic run`'s terminal and log files, on a real (tiny) pipeline run by the real
KFP local runner: the steps write what kic's steps write (their own lines,
executor chatter, library noise), and one of them fails."""

import io
import os

import pytest
from kfp import dsl, local

from kic.orchestration import run_log


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def talk(fail: bool) -> str:
    import sys

    print("[12:00:00] train: devices: 0 GPU(s); 1 CPU device(s), 2 cores", flush=True)
    print("[12:00:01] Epoch 1/2 - loss: 0.5000 - accuracy: 0.7500 - 10.0 images/s - 1.0s - ETA 0:01", flush=True)
    print("E0000 00:00:1796007455.675405 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
          file=sys.stderr, flush=True)
    print("[12:00:02] talk: warning: 3 files were rejected", flush=True)
    print("[12:00:02] talk: a detail for the log file", flush=True)
    if fail:
        print("Traceback-free account follows", flush=True)
        print("[12:00:03] talk failed: DataError: the data is bad", flush=True)
        raise SystemExit(1)
    return "ok"


@dsl.pipeline(name="talkative")
def talkative(fail_second: bool = False):
    first = talk(fail=False)
    talk(fail=fail_second).after(first)


def _run(tmp_path, *, fail: bool, verbose: bool = False,
         cache: bool = False) -> tuple[run_log.RunLog, str, str | None]:
    terminal = io.StringIO()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True, enable_caching=cache, cache_root=str(tmp_path / "cache"))
    error = None
    with run_log.RunLog(str(tmp_path / "logs"), verbose=verbose, terminal=terminal) as log:
        try:
            talkative(fail_second=fail)
        except RuntimeError as raised:
            error = str(raised)
    return log, terminal.getvalue(), error


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("failed"), fail=True)


def test_the_terminal_shows_steps_epochs_and_warnings_not_noise(failed_run):
    log, shown, _ = failed_run
    for expected in ("talk: started", "talk: finished in", "talk-2: started", "talk-2: FAILED after",
                     "train: devices: 0 GPU(s)", "Epoch 1/2 - loss: 0.5000", "ETA 0:01", "talk: warning: 3 files",
                     "talk failed: DataError: the data is bad"):
        assert expected in shown, expected
    for noise in ("executor_input", "cuInit", "a detail for the log file", "Streamed logs", "Traceback-free",
                  "\x1b["):
        assert noise not in shown, noise
    assert [step.status for step in log.steps.values()] == ["SUCCESS", "FAILURE"]


def test_each_step_has_its_whole_log_in_a_file(failed_run, tmp_path_factory):
    log, _, error = failed_run
    folder = os.path.dirname(log.steps["talk"].log_path)
    assert sorted(os.listdir(folder)) == ["run.log", "talk-2.log", "talk.log"]
    first = open(log.steps["talk"].log_path, encoding="utf-8").read()
    for expected in ("Got executor_input", "cuInit", "a detail for the log file", "talk: finished in"):
        assert expected in first, expected
    assert "talk failed" not in first
    second = open(log.steps["talk-2"].log_path, encoding="utf-8").read()
    assert "talk failed: DataError" in second and "\x1b[" not in second
    whole = open(os.path.join(folder, "run.log"), encoding="utf-8").read()
    assert "Running pipeline" in whole and first.strip().splitlines()[-1] in whole
    assert "talk-2" in error


def test_a_failed_step_is_named_with_its_last_lines(failed_run):
    log, _, _ = failed_run
    step = log.failed_step
    assert step.name == "talk-2" and step.log_path.endswith("talk-2.log")
    tail = log.last_lines(step, 3)
    assert len(tail) == 3 and tail[-1].endswith("talk failed: DataError: the data is bad")
    assert not any("finished with status" in line for line in log.last_lines(step))  # the step's words, not KFP's
    assert not any(line in ("{", "}") or '"parameterValues"' in line for line in log.last_lines(step, 200))


def test_verbose_shows_everything(tmp_path):
    log, shown, error = _run(tmp_path, fail=False, verbose=True)
    assert error is None and all(step.status == "SUCCESS" for step in log.steps.values())
    assert "Got executor_input" in shown and "a detail for the log file" in shown and "cuInit" in shown
    assert os.path.isfile(tmp_path / "logs" / "talk-2.log")


def test_a_step_from_the_cache_says_so_and_nothing_else_leaks(tmp_path, capfd):
    _run(tmp_path, fail=False, cache=True)
    log, shown, error = _run(tmp_path, fail=False, cache=True)
    assert error is None and [step.status for step in log.steps.values()] == ["CACHED", "CACHED"]
    assert "talk: reused an earlier run's outputs (cache)" in shown and "talk: started" not in shown
    assert "cache hit" in open(log.steps["talk"].log_path, encoding="utf-8").read()
    captured = capfd.readouterr()
    assert "cache hit" not in captured.out + captured.err  # KFP's INFO records go to the files only
