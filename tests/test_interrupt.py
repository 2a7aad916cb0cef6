"""Ctrl-C or SIGTERM stops a local run whole: its steps, their own child processes, and their temporary files;
and a step run on its own (kic prepare, train, predict) with its workers.

The fast test stops a real process that holds a tree of children the way kic run holds its steps (one that
ignores SIGTERM, as a busy step may); the slow ones stop real `kic run`s during train, and a real kic prepare
while its image workers run."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from kic.orchestration import shutdown

# A run's stand-in: a child, and a grandchild that ignores SIGTERM, started inside stoppable_run; each makes
# a temporary folder, as the steps do.
TREE = """
import subprocess, sys, tempfile, time
from kic.orchestration import shutdown
with shutdown.stoppable_run() as scratch:
    grandchild = "import signal, tempfile, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
                 "tempfile.mkdtemp(prefix='kic-model-'); time.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                              f"subprocess.run([sys.executable, '-c', {grandchild!r}])"])
    while not any(name.startswith('kic-model-') for name in __import__('os').listdir(scratch)):
        time.sleep(0.05)
    print('running', flush=True)
    child.wait()
"""


def group_members(group: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    state, _parent, process_group = handle.read().rpartition(")")[2].split()[:3]
            except OSError:
                continue
            if int(process_group) == group and state != "Z":
                members.append(int(entry))
    return members


def wait_gone(group: int, seconds: float) -> float:
    started = time.monotonic()
    while group_members(group):
        assert time.monotonic() - started < seconds, f"still running: {group_members(group)}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process table in /proc")
def test_sigterm_stops_every_descendant_and_removes_the_runs_temporary_folder(tmp_path):
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, env=environment,
                               start_new_session=True)
    assert process.stdout.readline() == "running\n"
    assert len(group_members(process.pid)) == 3
    process.send_signal(signal.SIGTERM)  # to the parent alone, as kill or a scheduler sends it
    process.wait(timeout=shutdown.GRACE_SECONDS + 5)
    assert wait_gone(process.pid, 2) < 2  # the grandchild that ignores SIGTERM included, by SIGKILL
    assert glob.glob(str(tmp_path / "kic-*")) == []


def test_a_run_killed_outright_leaves_a_folder_the_next_run_removes(tmp_path, monkeypatch):
    stale = tmp_path / f"{shutdown.SCRATCH_PREFIX}999999-x"
    stale.mkdir()
    (stale / shutdown.OWNER_FILE).write_text("")  # no process holds its flock any more
    (stale / "kic-model-abc").mkdir()
    os.utime(stale, (time.time() - 120, time.time() - 120))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with shutdown.stoppable_run() as scratch:
        assert not stale.exists() and os.path.isdir(scratch)
        with shutdown.stoppable_run() as other:  # a live run's folder is left alone
            assert os.path.isdir(scratch) and other != scratch
    assert glob.glob(str(tmp_path / "kic-*")) == []


# --------------------------------------------------------------------------- a real kic run

SETTINGS = ["--param", "backbone=mobilenet_v3_small_100_224", "--param", "pretrained_weights=none",
            "--param", "image_size=32", "--param", "epochs=200", "--param", "batch_size=8"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process table in /proc")
@pytest.mark.parametrize("how", ["SIGTERM to kic run", "Ctrl-C to the process group"])
def test_a_signal_during_train_stops_the_run_its_steps_and_their_temporary_files(tmp_path, how):
    from kic.demo_data import write_demo_dataset

    data, temporary = tmp_path / "images", tmp_path / "tmp"
    write_demo_dataset(str(data), images_per_class=20, size=40)
    temporary.mkdir()
    command = [sys.executable, "-m", "kic.cli", "run", "--data", str(data), "--output", str(tmp_path / "out"),
               *SETTINGS]
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "TMPDIR": str(temporary)})
        try:
            deadline = time.monotonic() + 300
            train_log = tmp_path / "out" / "logs" / "train.log"
            while not (train_log.exists() and "Epoch 1/" in train_log.read_text()):  # training, not starting
                assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "train never started"
                time.sleep(0.2)
            assert len(group_members(run.pid)) >= 2  # kic run and its train step
            signalled = time.monotonic()
            if how.startswith("SIGTERM"):
                run.send_signal(signal.SIGTERM)
            else:
                os.killpg(run.pid, signal.SIGINT)
            code = run.wait(timeout=shutdown.GRACE_SECONDS + 10)
            wait_gone(run.pid, 5)
            stopped_in = time.monotonic() - signalled
        finally:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
    output = (tmp_path / "run.log").read_text()
    print(f"{how}: stopped in {stopped_in:.1f} s")
    expected = signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT
    assert code == 128 + expected and f"kic: stopped by {expected.name}" in output, output[-3000:]
    assert stopped_in < 10
    assert glob.glob(str(temporary / "kic-*")) == []


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process table in /proc")
def test_sigterm_stops_kic_prepare_and_its_image_workers_and_the_folder_stays_usable(tmp_path):
    """SIGTERM reaches kic prepare alone (kill, a scheduler, `timeout`): its image worker processes
    stopped with it (they lived on as orphans), it leaves no temporary files, and the next prepare into
    the same folder runs."""
    from kic.demo_data import write_demo_dataset

    data, temporary, output = tmp_path / "images", tmp_path / "tmp", tmp_path / "out"
    write_demo_dataset(str(data), images_per_class=400, size=160)
    temporary.mkdir()
    command = [sys.executable, "-m", "kic.cli", "prepare", str(data), str(output), "--workers", "2"]
    environment = {**os.environ, "TMPDIR": str(temporary)}
    with open(tmp_path / "prepare.log", "w") as log:
        prepare = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=environment)
        try:
            deadline = time.monotonic() + 60
            while len(group_members(prepare.pid)) < 4:  # kic, multiprocessing's resource tracker, 2 workers
                assert prepare.poll() is None, (tmp_path / "prepare.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "prepare never started its workers"
                time.sleep(0.05)
            prepare.send_signal(signal.SIGTERM)
            code = prepare.wait(timeout=shutdown.GRACE_SECONDS + 10)
            wait_gone(prepare.pid, 5)
        finally:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(prepare.pid, signal.SIGKILL)
    log = (tmp_path / "prepare.log").read_text()
    assert code == 128 + signal.SIGTERM and log.rstrip().endswith("kic: stopped by SIGTERM"), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert glob.glob(str(temporary / "*")) == []
    assert not glob.glob(str(output / "*.tfrecord"))  # shards are only written once every image is in
    again = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert again.returncode == 0 and "prepared 3 classes" in again.stdout, again.stderr[-3000:]
