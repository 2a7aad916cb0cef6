"""The steps import TensorFlow without its startup noise, and hide nothing else."""

import os
import re
import subprocess
import sys

import pytest

from kic.runtime import quiet_startup

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers", "cuInit")


def _python(code: str) -> str:
    env = {name: value for name, value in os.environ.items() if name != quiet_startup.LOG_LEVEL}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.mark.skipif(quiet_startup.gpu_present(), reason="the noise in question is that of a machine without a GPU")
def test_tensorflow_starts_quietly_and_train_still_says_what_it_runs_on():
    quiet = _python(
        "import sys\n"
        "from kic.runtime import quiet_startup\n"
        "quiet_startup.import_tensorflow_quietly()\n"
        "from kic.training import devices\n"
        "print('train: devices:', devices.describe())\n"
        "print('a real problem', file=sys.stderr)\n")
    for noise in NOISE:
        assert noise not in quiet, noise
    assert re.search(r"train: devices: 0 GPU\(s\); \d+ CPU device", quiet) and "a real problem" in quiet


def test_only_the_startup_noise_is_dropped_from_what_cpp_writes(capfd):
    with quiet_startup.stderr_without(quiet_startup._NOISE):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"F0000 check failed: a real crash report\n")
        print("python writes here too", file=sys.stderr)
    err = capfd.readouterr().err
    assert "absl::InitializeLog" not in err
    assert "F0000 check failed: a real crash report" in err and "python writes here too" in err


def test_where_a_gpu_is_present_cuda_errors_still_speak(monkeypatch):
    monkeypatch.delenv(quiet_startup.LOG_LEVEL, raising=False)
    monkeypatch.setattr(quiet_startup.glob, "glob", lambda _pattern: ["/dev/nvidia0"])
    quiet_startup.quiet_log_level()
    assert os.environ[quiet_startup.LOG_LEVEL] == "2"  # errors shown, warnings not
    monkeypatch.delenv(quiet_startup.LOG_LEVEL)
    monkeypatch.setattr(quiet_startup.glob, "glob", lambda _pattern: [])
    quiet_startup.quiet_log_level()
    assert os.environ[quiet_startup.LOG_LEVEL] == "3"
    monkeypatch.setenv(quiet_startup.LOG_LEVEL, "0")  # the user's choice stands
    quiet_startup.quiet_log_level()
    assert os.environ[quiet_startup.LOG_LEVEL] == "0"


def test_a_kic_command_that_imports_tensorflow_deep_down_is_quiet_unless_asked(tmp_path):
    """`kic run --data DIR`, as on a machine without the ImageNet weights: its checks ask Keras where the weights
    would come from (importing TensorFlow) and it refuses in seconds, with the refusal alone on standard error;
    TF_CPP_MIN_LOG_LEVEL=0 brings TensorFlow's messages back."""
    command = [sys.executable, "-m", "kic.cli", "run", "--data", str(tmp_path / "nowhere"),
               "--output", str(tmp_path / "out")]
    env = {name: value for name, value in os.environ.items() if name != quiet_startup.LOG_LEVEL}
    env.update(KERAS_HOME=str(tmp_path / "keras"), https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    quiet = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2 and "data_source" in quiet.stderr and "no such folder" in quiet.stderr, quiet.stderr
    assert "pretrained_weights='imagenet'" in quiet.stderr  # the check that imported TensorFlow ran
    for noise in (*NOISE, "cudart_stub"):
        assert noise not in quiet.stderr, quiet.stderr
    loud = subprocess.run(command, env={**env, quiet_startup.LOG_LEVEL: "0"}, capture_output=True, text=True,
                          timeout=120)
    assert loud.returncode == 2 and "oneDNN custom operations" in loud.stderr, loud.stderr
