"""Training on several replicas and machines: the cluster the environment
describes, each worker's share of the input, batch-norm statistics from every
replica, and two real `kic train` workers on loopback (slow).

A strategy over several devices or processes must be set up before
TensorFlow's runtime starts, so those runs are separate processes."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tiny_backbone import IMAGE_SIZE

from kic.data import dataset_info, input_pipeline
from kic.training import distribution
from kic.training.distribution import ClusterError, cluster_from_environment

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


# ------------------------------------------------------------------- cluster
def _tf_config(cluster: dict, task_type: str, index: int) -> dict:
    return {distribution.TF_CONFIG: json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_two_workers_train_together_and_worker_0_is_the_chief():
    workers = {"worker": ["a:1", "b:2"]}
    first, second = (cluster_from_environment(_tf_config(workers, "worker", index)) for index in (0, 1))
    assert first.workers == second.workers == ["a:1", "b:2"]
    assert (first.worker_index, first.is_chief) == (0, True)
    assert (second.worker_index, second.is_chief) == (1, False)


def test_a_chief_task_is_the_chief_and_the_workers_come_after_it():
    cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1"]}  # a TFJob's roles
    chief = cluster_from_environment(_tf_config(cluster, "chief", 0))
    worker = cluster_from_environment(_tf_config(cluster, "worker", 0))
    assert chief.is_chief and chief.worker_index == 0 and len(chief.workers) == 3
    assert not worker.is_chief and worker.worker_index == 1
    with pytest.raises(ClusterError, match="parameter servers"):
        cluster_from_environment(_tf_config(cluster, "ps", 0))


def test_vertex_worker_pools_read_as_tf_config_roles_when_tf_config_is_absent():
    spec = json.dumps({"cluster": {"workerpool0": ["m:1"], "workerpool1": ["r:1", "r:2"]},
                       "task": {"type": "workerpool1", "index": 1, "trial": ""}, "job": "{}"})
    cluster = cluster_from_environment({distribution.CLUSTER_SPEC: spec})
    assert cluster.spec == {"chief": ["m:1"], "worker": ["r:1", "r:2"]}
    assert (cluster.task_type, cluster.worker_index, cluster.is_chief) == ("worker", 2, False)
    # TF_CONFIG, where both are set, says the same in TensorFlow's own terms and wins.
    both = {distribution.CLUSTER_SPEC: spec, **_tf_config({"worker": ["x:1", "y:1"]}, "worker", 0)}
    assert cluster_from_environment(both).workers == ["x:1", "y:1"]


@pytest.mark.parametrize("environment", [
    {}, _tf_config({"worker": ["only:1"]}, "worker", 0), _tf_config({"chief": ["only:1"]}, "chief", 0)])
def test_one_machine_is_not_a_cluster(environment):
    assert cluster_from_environment(environment) is None


@pytest.mark.parametrize("text, message", [("{not json", "not a cluster description"),
                                           ('{"cluster": {"worker": ["a:1", "b:1"]}}', "not a cluster"),
                                           ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", '
                                            '"index": 5}}', "not in its cluster")])
def test_a_malformed_cluster_is_refused_with_what_is_wrong(text, message):
    with pytest.raises(ClusterError, match=message):
        cluster_from_environment({distribution.TF_CONFIG: text})


def test_only_the_chiefs_outputs_are_kept(tmp_path, monkeypatch):
    import tensorflow as tf

    from kic.training import loop

    monkeypatch.delenv(loop.WORKER_OUTPUT_VARIABLE, raising=False)
    chief = distribution.Distribution(tf.distribute.get_strategy(), num_workers=2)
    other = distribution.Distribution(tf.distribute.get_strategy(), num_workers=2, worker_index=1, is_chief=False)
    with loop._output_dir(str(tmp_path / "model"), chief) as folder:
        assert folder == str(tmp_path / "model")
    with loop._output_dir(str(tmp_path / "model"), other) as folder:
        assert folder != str(tmp_path / "model")
        open(os.path.join(folder, "model.keras"), "w").close()
    assert not os.path.exists(folder)
    monkeypatch.setenv(loop.WORKER_OUTPUT_VARIABLE, str(tmp_path / "kept"))
    with loop._output_dir(str(tmp_path / "model"), other) as folder:
        assert folder == str(tmp_path / "kept" / "worker-1")


# --------------------------------------------------------------------- input
def test_each_worker_reads_its_own_share_of_the_records_every_epoch(prepared):
    info = dataset_info.load(prepared)
    shards, count = info.shard_paths(prepared, "train"), info.splits["train"].num_examples

    def epochs(worker_index: int) -> list[list[bytes]]:
        dataset = input_pipeline.make_dataset(shards, input_pipeline.InputOptions(
            input_pipeline.Images(image_size=16, interpolation="bilinear", num_classes=3, binary_mode=False,
                                  num_examples=count),
            input_pipeline.Reading(batch_size=4, num_workers=3, worker_index=worker_index),
            input_pipeline.Training(seed=3)))
        return [sorted(pixels.tobytes() for images, _ in dataset for pixels in images.numpy()) for _ in range(2)]

    shares = [epochs(index) for index in range(3)]
    for index, (first, second) in enumerate(shares):
        assert first == second and len(first) == input_pipeline.shard_size(count, 3, index)
    everything = [image for first, _ in shares for image in first]
    assert len(set(everything)) == len(everything) == count  # disjoint, and together every image


# ---------------------------------------------------------------- batch norm
MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import sys

    import keras
    import numpy as np
    import tensorflow as tf

    # Two CPU devices, set before the runtime starts, for a two-replica MirroredStrategy.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kic.training import batch_norm
    from kic.training.callbacks import Validation

    def build():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
        return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, size=(48, 8, 8, 3)).astype("float32")
    targets = np.eye(2, dtype="float32")[rng.integers(0, 2, 48)]
    batches = tf.data.Dataset.from_tensor_slices((images, targets)).batch(16)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    model.fit(batches, epochs=1, verbose=0, callbacks=[Validation(batches, batches, recalibration_images=48)])

    spread = {variable.path: max(float(np.abs(copy.numpy() - strategy.experimental_local_results(
        variable.value)[0].numpy()).max()) for copy in strategy.experimental_local_results(variable.value))
        for variable in model.weights}
    # The same weights on one device, recalibrated on the same images in the
    # replicas' halves of each batch (what each replica's layer normalises by).
    single = build()
    single.set_weights(model.get_weights())
    used = batch_norm.recalibrate(single, batches.rebatch(8), images=48)
    layer, alone = model.get_layer("bn"), single.get_layer("bn")
    json.dump({"spread": spread, "used": used,
               "mean": [layer.moving_mean.numpy().tolist(), alone.moving_mean.numpy().tolist()],
               "variance": [layer.moving_variance.numpy().tolist(), alone.moving_variance.numpy().tolist()]},
              sys.stdout)
""")


def _environment(**variables) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "3", **variables}


@pytest.mark.slow  # a process of its own: about 10 s, most of it starting TensorFlow
def test_recalibration_under_mirrored_strategy_uses_every_replicas_images_and_agrees_everywhere():
    run = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, timeout=180,
                         env=_environment())
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["used"] == 48
    # Keras 3 updates each replica's copy of the moving statistics on its own;
    # recalibration leaves one value everywhere, as the weights have.
    assert result["spread"] and max(result["spread"].values()) == 0.0, result["spread"]
    np.testing.assert_allclose(*result["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(*result["variance"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------- two workers, real
WORKER_SCRIPT = textwrap.dedent("""
    import sys

    import tiny_backbone
    from kic.cli import main

    with tiny_backbone.registered():
        sys.exit(main(sys.argv[1:]))
""")

TRAIN_PARAMS = {"backbone": "tiny_test_net", "pretrained_weights": "none", "image_size": IMAGE_SIZE, "seed": 1,
                "epochs": 3, "batch_size": 8, "learning_rate": 0.01}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _accuracy_on_validation(model_dir: str, prepared: str) -> float:
    from kic.model.loading import load_keras_model

    info = dataset_info.load(prepared)
    model = load_keras_model(model_dir)
    dataset = input_pipeline.make_dataset(info.shard_paths(prepared, "validation"), input_pipeline.InputOptions(
        input_pipeline.Images(image_size=IMAGE_SIZE, interpolation="bilinear", num_classes=info.num_classes,
                              binary_mode=False, num_examples=info.splits["validation"].num_examples,
                              short_side=info.image_short_side),
        input_pipeline.Reading(batch_size=8)))
    hits = [int(np.argmax(logits) == np.argmax(target)) for pixels, targets in dataset
            for logits, target in zip(model.predict_on_batch(pixels), targets.numpy(), strict=True)]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_two_kic_train_workers_on_loopback_train_one_model(prepared, tiny_backbone, tmp_path):
    from tiny_backbone import train_options

    from kic.config import TrainingConfig
    from kic.model.loading import load_keras_model
    from kic.training import train

    addresses = [f"localhost:{port}" for port in _free_ports(2)]
    params = [argument for name, value in TRAIN_PARAMS.items() for argument in ("--param", f"{name}={value}")]
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker-{index}.log", "w")
        workers.append((subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, "train", prepared, str(tmp_path / f"out-{index}"), *params],
            stdout=log, stderr=subprocess.STDOUT, env=_environment(
                TF_CONFIG=tf_config, KIC_WORKER_OUTPUT=str(tmp_path / "kept"))), log))
    codes = [process.wait(timeout=300) for process, _ in workers]
    logs = [(tmp_path / f"worker-{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "strategy: MultiWorkerMirroredStrategy over 2 workers, 2 replicas in all; this is worker 0 (chief)" \
        in logs[0]
    assert "this is worker 1 (not the chief" in logs[1]

    chief_dir = tmp_path / "out-0" / "model"
    assert not (tmp_path / "out-1").joinpath("model").exists()  # the other worker's outputs went elsewhere
    chief_metrics = json.loads((tmp_path / "out-0" / "training_metrics.json").read_text())
    # Every weight and batch-norm statistic alike on both workers.
    chief, other = load_keras_model(str(chief_dir)), load_keras_model(str(tmp_path / "kept" / "worker-1"))
    for mine, theirs in zip(chief.weights, other.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    # Its validation accuracy is that of the whole validation split, not the chief's share.
    assert _accuracy_on_validation(str(chief_dir), prepared) == pytest.approx(chief_metrics["val_accuracy"])

    alone = train(prepared, str(tmp_path / "alone"), TrainingConfig(**{
        name: TRAIN_PARAMS[name] for name in ("epochs", "batch_size", "learning_rate")}),
        train_options(tiny_backbone), log=lambda _line: None)
    # Per-replica batch statistics make it a different run, but as good a one.
    assert chief_metrics["val_accuracy"] >= alone.best_metrics["val_accuracy"] - 0.17, (chief_metrics,
                                                                                      alone.best_metrics)
