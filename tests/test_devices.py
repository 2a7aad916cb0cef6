"""No silent CPU training: the devices are said, and missing GPUs fail at once."""

import os

import pytest
import tensorflow as tf

from kic.training import devices


def test_the_devices_are_described():
    text = devices.describe()
    gpus, cpus = tf.config.list_physical_devices("GPU"), tf.config.list_physical_devices("CPU")
    assert text.startswith(f"{len(gpus)} GPU(s)")
    assert text.endswith(f"; {len(cpus)} CPU device(s), {os.cpu_count()} cores")


def test_asking_for_no_more_gpus_than_are_visible_passes_and_one_more_fails():
    """Anywhere: no GPU asked for (CPU training on purpose) passes on a machine without one."""
    visible = len(tf.config.list_physical_devices("GPU"))
    devices.require_gpus(0)
    devices.require_gpus(visible)
    with pytest.raises(devices.NoGpuError, match=rf"asked for {visible + 1} GPU\(s\) and sees {visible};"):
        devices.require_gpus(visible + 1)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_asking_for_a_gpu_where_there_is_none_fails_naming_likely_causes(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(devices.NoGpuError) as error:
        devices.require_gpus(1)
    message = str(error.value)
    assert "asked for 1 GPU(s) and sees 0" in message and "accelerator_count=0" in message
    assert "CUDA_VISIBLE_DEVICES='-1' hides every GPU" in message
    assert "/dev/nvidia" in message or "no CUDA support" in message
