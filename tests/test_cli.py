"""The kic command besides `run` (tested in test_local_run.py)."""

import json

from kic import artifacts, cli
from kic.demo_data import write_demo_dataset


def test_prepare_command_writes_a_finished_dataset(tmp_path, capsys):
    write_demo_dataset(str(tmp_path / "images"), images_per_class=10, size=32)
    code = cli.main(["prepare", str(tmp_path / "images"), str(tmp_path / "prepared"), "--workers", "1",
                     "--image-short-side", "32"])
    assert code == 0
    info = json.loads((tmp_path / "prepared" / artifacts.DATASET_INFO).read_text())
    assert info["class_names"] == ["circle", "square", "triangle"]
    assert "prepared 3 classes" in capsys.readouterr().out


def test_progress_bar_redraws_one_line(capsys):
    bar = cli.ProgressBar()
    bar("prepare: listing /data")
    bar("prepare: 5/10 images (50/s), 0 rejected")
    bar("prepare: 10/10 images (60/s), 1 rejected")
    out = capsys.readouterr().out
    assert out.startswith("prepare: listing /data\n")
    assert "\r[" + "#" * 15 + "." * 15 + "] 5/10 images" in out
    assert out.endswith("\r[" + "#" * 30 + "] 10/10 images (60/s), 1 rejected\n")


def test_validate_command_reads_the_reference_json(tmp_path, capsys):
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"epochs": "7", "eps": "1e-6"}))
    assert cli.main(["validate", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 7
    path.write_text(json.dumps({"epochs": "0"}))
    assert cli.main(["validate", str(path)]) == 2
    assert "epochs=0" in capsys.readouterr().err


def test_backbones_command_lists_the_registry(capsys):
    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2_100_224" in out and "efficientnet_b0" in out


def test_pipeline_parameters_are_typed_from_the_ir_and_checked_together():
    import os

    import pytest

    from kic import parameters
    from kic.config import ParameterError

    known = parameters.pipeline_parameters(os.path.join(os.path.dirname(__file__), "..", "pipeline.yaml"))
    values = parameters.resolve(known, {"data_source": "x", "epochs": "4", "augmentation": "true", "top_k": "3"})
    assert values["epochs"] == 4 and values["augmentation"] is True and values["top_k"] == 3
    with pytest.raises(ParameterError) as error:
        parameters.resolve(known, {"data_source": "x", "validation_fraction": "0", "tflite": "int4"})
    assert {problem.name for problem in error.value.problems} == {"validation_fraction", "tflite"}
    with pytest.raises(ParameterError, match="must leave training images"):
        parameters.resolve(known, {"data_source": "x", "validation_fraction": "0.5", "test_fraction": "0.6"})
    parameters.resolve(known, {"data_source": "x", "validation_fraction": "0", "validation_source": "y"})


def test_the_demo_preset_uses_the_registrys_cpu_backbone():
    from kic.model import backbones

    assert cli.DEMO_PARAMETERS["backbone"] == backbones.CPU_DEMO_BACKBONE
    assert cli.DEMO_PARAMETERS["pretrained_weights"] == "none"  # no download in the default run
