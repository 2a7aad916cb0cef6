"""No silent CPU training: the devices are said, and missing GPUs fail at once."""

import pytest
import tensorflow as tf

from kic.training import devices


def test_the_devices_are_described():
    text = devices.describe()
    assert "GPU(s)" in text and "CPU device(s)" in text


def test_asking_for_no_gpu_is_fine_anywhere():
    devices.require_gpus(0)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_asking_for_a_gpu_where_there_is_none_fails_naming_likely_causes(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(devices.NoGpuError) as error:
        devices.require_gpus(1)
    message = str(error.value)
    assert "asked for 1 GPU(s) and sees 0" in message and "accelerator_count=0" in message
    assert "CUDA_VISIBLE_DEVICES='-1' hides every GPU" in message
    assert "/dev/nvidia" in message or "no CUDA support" in message
