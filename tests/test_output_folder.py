"""An output folder belongs to one run at a time, and kic removes only what it wrote there: real processes hold
the lock (flock), the real CLI refuses."""

import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from kic import cli
from kic.orchestration import local_run, output_folder, run_log

HOLD = ("import sys, time\nfrom kic.orchestration import output_folder\n"
        "with output_folder.locked(sys.argv[1], 'kic run --output elsewhere'):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n")


@pytest.fixture
def held(tmp_path):
    """The output folder, locked by another live process."""
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield folder, holder
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("command", [["run"], ["tune", "--search-space", "space.json"], ["prepare", "data"],
                                     ["train", "prepared"]])
def test_a_second_run_into_a_busy_folder_fails_at_once_naming_the_holder(held, command, capsys, tmp_path):
    folder, holder = held
    if command[0] == "train":  # what train checks before it takes the folder
        (tmp_path / "prepared").mkdir()
        (tmp_path / "prepared" / "dataset_info.json").write_text("{}")
        command = ["train", str(tmp_path / "prepared")]
    if command[0] == "prepare":  # and prepare
        (tmp_path / "data").mkdir()
        command = ["prepare", str(tmp_path / "data")]
    started = time.perf_counter()
    options = ["--output", str(folder)] if command[0] in ("run", "tune") else [str(folder)]
    assert cli.main([*command, *options]) == 1
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert f"{folder} is in use by another kic run (pid {holder.pid} on " in err
    assert "kic run --output elsewhere" in err and "since 20" in err
    assert os.listdir(folder) == [output_folder.LOCK_FILE]  # nothing done: not even the demo data written


def test_the_lock_goes_with_its_process_however_it_ends(held):
    folder, holder = held
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with output_folder.locked(str(folder)):  # never stale
        pass


@pytest.mark.parametrize("command", [["run"], ["tune", "--search-space", "space.json"]])
def test_an_output_that_is_a_file_is_a_user_error(tmp_path, command, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert cli.main([*command, "--output", str(tmp_path / "out")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_user_file_in_a_folder_kic_clears_stops_the_run_before_anything_runs(tmp_path, capsys):
    output = tmp_path / "out"
    (output / "model").mkdir(parents=True)
    (output / "model" / "notes.txt").write_text("mine")
    started = time.perf_counter()
    assert cli.main(["run", "--output", str(output), "--param", "epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "files it did not write" in err and str(output / "model" / "notes.txt") in err
    assert time.perf_counter() - started < 30 and not (output / "runs").exists()
    assert (output / "model" / "notes.txt").read_text() == "mine"


def test_collecting_a_run_replaces_only_kics_own_model_files(tmp_path, local_runs):
    output = tmp_path / "out"
    model = output / "model"
    local_run.collect_outputs(local_runs.fresh, str(output))
    assert output_folder.foreign(str(model)) == []  # what it unpacked is on its list
    (model / "notes.txt").write_text("mine")  # added after the run: it stays through the next
    local_run.collect_outputs(local_runs.unblessed, str(output))
    assert sorted(os.listdir(model)) == ["notes.txt"]
    # A model folder an older kic unpacked has no list: what model.tar.gz holds is kic's.
    with tarfile.open(output / "model.tar.gz", "w:gz") as tar:
        (tmp_path / "label.json").write_text("{}")
        tar.add(tmp_path / "label.json", arcname="label.json")
    (model / "label.json").write_text("{}")
    assert output_folder.foreign(str(model), local_run._in_model_tarball(str(output))) == ["notes.txt"]


def test_the_run_log_clears_only_the_logs_kic_wrote(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "notes.txt").write_text("mine")
    (logs / "train.log").write_text("an older kic's log: no list of kic's files")
    with run_log.RunLog(str(logs), terminal=open(os.devnull, "w")):
        print("a line")
    assert sorted(os.listdir(logs)) == ["notes.txt", run_log.RUN_LOG]
    assert output_folder.foreign(str(logs)) == ["notes.txt"]


def test_predict_never_writes_over_an_input_nor_in_a_format_it_does_not_know(tmp_path, capsys):
    images = tmp_path / "in" / "a"
    images.mkdir(parents=True)
    (images / "0.png").write_bytes(b"\x89PNG not really")
    manifest = tmp_path / "list.csv"
    manifest.write_text("uri\na/0.png\n")
    for output in (images / "0.png", tmp_path / "predictions.txt"):
        assert cli.main(["predict", str(tmp_path / "model"), str(tmp_path / "in"), "--output", str(output)]) == 2
        assert "a file whose extension picks the format: .jsonl, .csv" in capsys.readouterr().err
    assert (images / "0.png").read_bytes() == b"\x89PNG not really"
    assert cli.main(["predict", str(tmp_path / "model"), str(manifest), "--output", str(manifest)]) == 2
    assert "predictions never overwrite an input" in capsys.readouterr().err
    assert manifest.read_text() == "uri\na/0.png\n"
