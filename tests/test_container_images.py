"""The container images' definitions (images/): their constraints files agree with setup.py and with
what images/constraints.py writes, and the Dockerfiles install what those files pin. Offline: the
resolution itself (pip against PyPI) happens only when someone runs images/constraints.py."""

import importlib.metadata
import importlib.util
import os
import re

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("constraints", os.path.join(ROOT, "images", "constraints.py"))
constraints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(constraints)


def _pins(image: str) -> dict[str, str]:
    with open(constraints.path(image), encoding="utf-8") as handle:
        return constraints.parse(handle.read())


def _dockerfile(image: str) -> str:
    with open(os.path.join(ROOT, "images", f"{image}.Dockerfile"), encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.parametrize("image", constraints.IMAGES)
def test_constraints_pin_every_requirement_of_setup_py_within_its_range(image):
    pins = _pins(image)
    requirements = [Requirement(text) for text in constraints.install_requires()]
    assert {requirement.name for requirement in requirements} >= {"kfp", "tensorflow", "keras"}  # read them all
    for requirement in requirements:
        name = constraints.canonical(requirement.name)
        assert name in pins, f"{constraints.path(image)} does not pin {name}: run images/constraints.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{constraints.path(image)} pins {name}=={pins[name]}, outside setup.py's {requirement}: "
            "run images/constraints.py")


@pytest.mark.parametrize("image", constraints.IMAGES)
def test_constraints_files_are_what_the_generator_writes(image):
    """Same inputs (setup.py's requirements, the pins), same text: a hand edit, a pin added or removed
    without the generator, or a setup.py requirement changed since the last run all show here."""
    with open(constraints.path(image), encoding="utf-8") as handle:
        committed = handle.read()
    assert constraints.render(image, constraints.install_requires(), constraints.parse(committed)) == committed, (
        f"{constraints.path(image)} is stale: run images/constraints.py")


def test_the_gpu_image_pins_tensorflows_cuda_libraries_and_the_cpu_image_has_none():
    cpu, gpu = _pins("cpu"), _pins("gpu")
    # TensorFlow's own list of them, from the installed distribution's metadata.
    requirements = [Requirement(text) for text in importlib.metadata.requires("tensorflow")]
    cuda = [requirement for requirement in requirements if requirement.marker
            and requirement.marker.evaluate({"extra": "and-cuda"}) and not requirement.marker.evaluate({"extra": ""})]
    assert len(cuda) >= 5, cuda
    for requirement in cuda:
        assert constraints.canonical(requirement.name) in gpu, requirement
        assert constraints.canonical(requirement.name) not in cpu, requirement
    assert not [name for name in cpu if name.startswith("nvidia-")]


def test_both_images_run_the_same_version_of_every_package_they_share():
    """train (GPU image) writes the model that evaluate and export (CPU image) load."""
    cpu, gpu = _pins("cpu"), _pins("gpu")
    assert {name: gpu.get(name) for name in cpu} == cpu


@pytest.mark.parametrize("image", constraints.IMAGES)
def test_dockerfile_installs_the_wheel_under_its_constraints_on_the_resolved_base(image):
    text = _dockerfile(image)
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == [constraints.BASE_IMAGE] * 2  # build and runtime
    extras = "".join(f' "{extra}"' for extra in constraints.EXTRA_REQUIREMENTS[image])
    assert f"source=images/constraints-{image}.txt,target=/tmp/constraints.txt" in text
    assert f"pip install --no-cache-dir --constraint /tmp/constraints.txt /wheels/kic-*.whl{extras}\n" in text
    assert re.search(r"^USER 1000$", text, re.MULTILINE) and re.search(r"^WORKDIR /home/kic$", text, re.MULTILINE)
    assert "ARG PREFETCH_BACKBONES" in text and "python -m kic.model.prefetch_weights" in text


def test_the_gpu_image_finds_the_gke_driver_libraries():
    environment = re.search(r"LD_LIBRARY_PATH=(\S+)", _dockerfile("gpu")).group(1)
    assert "/usr/local/nvidia/lib64" in environment.split(":")
    assert "LD_LIBRARY_PATH" not in _dockerfile("cpu")
