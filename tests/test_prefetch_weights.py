"""python -m kic.model.prefetch_weights: the images' build step that pre-fills the Keras cache for
clusters without internet access, against a loopback HTTP server standing in for Keras' weights host."""

import functools
import http.server
import os
import threading

import h5py
import keras
import numpy as np
import pytest
from keras.src.applications import efficientnet, mobilenet_v2
from keras.src.legacy.saving import legacy_h5_format

from kic import parameters
from kic.model import backbone_registry, backbones, prefetch_weights, weights

SMALL = "mobilenet_v2_035_96"
REFUSED = "http://127.0.0.1:9/keras-applications/"  # loopback port 9: refused at once


@pytest.fixture
def weights_host(tmp_path):
    """Serves files from a folder; yields (folder, base URL, paths requested)."""
    served, requested = tmp_path / "served", []
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook's name
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()


def test_prefetched_weights_are_what_keras_loads_offline(keras_home, weights_host, monkeypatch):
    served, url, requested = weights_host
    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", url)
    backbone = backbone_registry.resolve(SMALL)
    # The host holds a real Keras Applications weights file (random values: ours to recognise), and
    # MobileNet's file for another input size, which NAME:SIZE asks for.
    reference = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                               weights=None, pooling="avg")
    native, at_128 = (os.path.basename(weights.imagenet_source(backbone, size).origin) for size in (96, 128))
    with h5py.File(served / native, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
    (served / at_128).write_bytes(b"the 128 px file")

    assert prefetch_weights.main([SMALL, f"{SMALL}:128"]) == 0
    assert sorted(requested) == sorted([f"/{native}", f"/{at_128}"])
    for name in (native, at_128):
        assert (keras_home / "models" / name).read_bytes() == (served / name).read_bytes()

    requested.clear()  # already in the cache: nothing is downloaded again
    assert prefetch_weights.main([SMALL]) == 0
    assert requested == []

    # The host is gone, as on a cluster without internet: the front door and Keras find the cached file.
    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", REFUSED)
    parameters.validate({"backbone": SMALL, "pretrained_weights": "imagenet"})
    extractor = backbones.build_feature_extractor(backbone, weights="imagenet")
    loaded, expected = extractor.get_weights(), reference.get_weights()
    assert len(loaded) == len(expected)
    for actual, wanted in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(actual, wanted)


def test_bad_names_fail_before_any_download(keras_home, weights_host, monkeypatch, capsys):
    _, url, requested = weights_host
    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", url)
    assert prefetch_weights.main([SMALL, "mobilenet_v9"]) == 1
    assert "unknown backbone 'mobilenet_v9'" in capsys.readouterr().err
    assert prefetch_weights.main([f"{SMALL}:big"]) == 1
    assert "a whole number of pixels" in capsys.readouterr().err
    assert prefetch_weights.main([f"{SMALL}:8"]) == 1
    assert "at least 32" in capsys.readouterr().err
    assert requested == [] and not (keras_home / "models").exists()


def test_download_failures_are_clear_and_leave_no_file(keras_home, weights_host, monkeypatch, capsys):
    monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", REFUSED)
    assert prefetch_weights.main([SMALL]) == 1
    error = capsys.readouterr().err
    assert "could not download ImageNet weights for mobilenet_v2_035_96" in error and "127.0.0.1:9" in error

    # EfficientNet's weights come with a hash that Keras checks: a wrong file is refused and removed.
    served, url, _ = weights_host
    monkeypatch.setattr(efficientnet, "BASE_WEIGHTS_PATH", url)
    source = weights.imagenet_source(backbone_registry.resolve("efficientnet_b0"), 224)
    assert source.file_hash
    (served / os.path.basename(source.origin)).write_bytes(b"not the weights")
    assert prefetch_weights.main(["efficientnet_b0"]) == 1
    error = capsys.readouterr().err
    assert "could not download ImageNet weights for efficientnet_b0" in error and "hash does not match" in error
    assert not os.path.exists(source.cache_path)
