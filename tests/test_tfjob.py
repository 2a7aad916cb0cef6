"""docs/tfjob.yaml, the documented multi-node run on Kubeflow's training
operator: what the operator needs to set TF_CONFIG, what every worker runs
(`kic train` with parameters the front door accepts), in the GPU image the
project builds, with train's resources and a GPU."""

import os

import yaml

import kic
from kic import parameters
from kic.components import image
from kic.pipelines.placement import STEP_RESOURCES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _manifest() -> dict:
    with open(os.path.join(ROOT, "docs", "tfjob.yaml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_the_tfjob_runs_kic_train_on_every_worker_of_the_gpu_image():
    manifest = _manifest()
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "TFJob"
    replicas = manifest["spec"]["tfReplicaSpecs"]
    # Workers only: worker 0 is the chief (TF_CONFIG has no "chief" task), and train's chief rule follows TF's.
    assert set(replicas) == {"Worker"}
    worker = replicas["Worker"]
    assert worker["replicas"] >= 2 and worker["restartPolicy"] == "OnFailure"
    [container] = worker["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the container the operator gives TF_CONFIG and the port to
    assert container["image"] == f"{image.REGISTRY}/kic-gpu:{kic.__version__}"  # what images/build.sh pushes

    assert container["command"] == ["kic", "train"]
    prepared, output, *options = container["args"]
    assert prepared.startswith("gs://") and output.startswith("gs://") and prepared != output  # shared by all
    assert options[::2] == ["--param"] * (len(options) // 2)
    given = dict(option.split("=", 1) for option in options[1::2])
    values = parameters.validate(given, reachability=False)  # the front door kic train checks through
    assert values["batch_size"] == 256


def test_the_tfjob_asks_for_trains_resources_and_a_gpu():
    pod = _manifest()["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    [container] = pod["containers"]
    train = STEP_RESOURCES["train"]
    assert container["resources"]["requests"] == {"cpu": train.cpu_request, "memory": train.memory_request,
                                                  "nvidia.com/gpu": 1}
    assert container["resources"]["limits"] == {"cpu": train.cpu_limit, "memory": train.memory_limit,
                                                "nvidia.com/gpu": 1}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
