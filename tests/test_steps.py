"""The component bodies: user errors end a step with their message, not a traceback."""

import pytest

from kic import steps
from kic.config import ParameterError, TrainingConfig


def _hyperparameters(**overrides):
    return {**TrainingConfig().to_dict(), **overrides}


def test_validate_step_accepts_the_defaults_and_sizes_the_prepared_images(capsys):
    assert steps.validate_step(backbone="mobilenet_v2_100_224", image_size=0, image_short_side=0,
                               **_hyperparameters()) == 256
    assert "are valid" in capsys.readouterr().out
    assert steps.validate_step(backbone="mobilenet_v2_100_224", image_size=0, image_short_side=500,
                               **_hyperparameters()) == 500


def test_validate_step_lists_every_problem_and_exits_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as stop:
        steps.validate_step(backbone="resnet5O", image_size=8, image_short_side=0,
                            **_hyperparameters(epochs=0, eval_metric="auc", learning_rate=3.0))
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "validate failed: ParameterError" in out
    for expected in ("epochs=0", "learning_rate=3.0", "eval_metric='auc'", "resnet5O", "image_size=8"):
        assert expected in out, expected
    assert "Traceback" not in out


def test_debug_mode_keeps_the_exception(monkeypatch):
    monkeypatch.setenv("KIC_DEBUG", "1")
    with pytest.raises(ParameterError):
        steps.validate_step(backbone="mobilenet_v2_100_224", image_size=0, image_short_side=0,
                            **_hyperparameters(epochs=0))


def test_programming_errors_are_not_hidden():
    with pytest.raises(TypeError):
        steps.validate_step(backbone="mobilenet_v2_100_224")  # image_size missing: a bug, not bad input


@pytest.mark.parametrize("backbone, image_size, requested, expected", [
    ("mobilenet_v2_100_224", 0, 0, 256), ("inception_v3", 0, 0, 352), ("mobilenet_v3_small_100_224", 64, 0, 96),
    ("efficientnet_b7", 0, 0, 704), ("mobilenet_v2_100_224", 0, 480, 480),
])
def test_prepared_short_side_follows_the_model(backbone, image_size, requested, expected):
    from kic.parameters import prepared_short_side

    assert prepared_short_side(backbone=backbone, image_size=image_size, requested=requested) == expected
