"""The container images' definitions (images/): their constraints files agree with setup.py and with
what images/constraints.py writes, and the Dockerfiles install what those files pin. Offline: the
resolution itself (pip against PyPI) happens only when someone runs images/constraints.py."""

import dataclasses
import importlib.metadata
import importlib.util
import os
import shlex

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("constraints", os.path.join(ROOT, "images", "constraints.py"))
constraints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(constraints)


def _pins(image: str) -> dict[str, str]:
    with open(constraints.path(image), encoding="utf-8") as handle:
        return constraints.parse(handle.read())


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    flags: tuple[tuple[str, str], ...]  # the leading --name=value options (RUN --mount, COPY --from), in order
    arguments: str  # the rest, its continuation lines joined

    def words(self) -> list[str]:
        return shlex.split(self.arguments)

    def flag_values(self, name: str) -> list[str]:
        return [value for flag, value in self.flags if flag == name]

    def variables(self) -> dict[str, str]:
        """ENV's or ARG's NAME=VALUE pairs (quotes removed); ``ENV NAME VALUE``, the older form, too."""
        words = self.words()
        if self.keyword == "ENV" and "=" not in words[0]:
            return {words[0]: self.arguments.split(None, 1)[1].strip()}
        return dict((word.split("=", 1) + [""])[:2] for word in words)


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions as Docker reads them: comment lines dropped (inside a continued instruction too,
    where blank lines are dropped as well), a line ending in a backslash continued on the next, keywords in
    any case. What is commented out is not there."""
    instructions, continued = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (continued and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            continued += line.rstrip()[:-1] + " "
            continue
        logical, continued = (continued + line).strip(), ""
        if not logical:
            continue
        keyword, _, rest = logical.partition(" ")
        flags = []
        while rest.lstrip().startswith("--"):
            flag, _, rest = rest.lstrip().partition(" ")
            name, _, value = flag[2:].partition("=")
            flags.append((name, value))
        instructions.append(Instruction(keyword.upper(), tuple(flags), rest.strip()))
    assert not continued, "the last instruction ends in a continuation"
    return instructions


def _stages(image: str) -> list[list[Instruction]]:
    """Each build stage's instructions, FROM first."""
    with open(os.path.join(ROOT, "images", f"{image}.Dockerfile"), encoding="utf-8") as handle:
        instructions = parse_dockerfile(handle.read())
    assert instructions[0].keyword == "FROM"
    stages = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _environment(stage: list[Instruction]) -> dict[str, str]:
    return {name: value for instruction in stage if instruction.keyword == "ENV"
            for name, value in instruction.variables().items()}


def _mount(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in value.split(","))


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


def test_the_dockerfile_reader_sees_what_docker_sees():
    text = ("# syntax=docker/dockerfile:1\n"
            "# USER 1000\n"
            "   # RUN indented comment\n"
            "FROM base AS build\n"
            "run --mount=type=bind,source=a,target=/b \\\n"
            "    # a note between continued lines\n"
            "\n"
            "    pip install \\\n"
            "    x\n"
            'ENV A=1 B="two words" \\\n'
            "    C=${A}:3\n"
            "ENV OLD spaced value\n")
    instructions = parse_dockerfile(text)
    assert [instruction.keyword for instruction in instructions] == ["FROM", "RUN", "ENV", "ENV"]
    run = instructions[1]
    assert run.flag_values("mount") == ["type=bind,source=a,target=/b"] and run.words() == ["pip", "install", "x"]
    assert instructions[2].variables() == {"A": "1", "B": "two words", "C": "${A}:3"}
    assert instructions[3].variables() == {"OLD": "spaced value"}


@pytest.mark.parametrize("image", constraints.IMAGES)
def test_dockerfile_builds_the_wheel_from_every_package_folder_and_installs_it_under_its_constraints(image):
    build, runtime = _stages(image)
    assert build[0].words() == [constraints.BASE_IMAGE, "AS", "build"] and runtime[0].words() == [
        constraints.BASE_IMAGE]
    # The wheel is built from setup.py and every package folder (kic, components, pipelines) ...
    copied = {source for instruction in build if instruction.keyword == "COPY" for source in instruction.words()[:-1]}
    packages = {name for name in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, name, "__init__.py"))}
    assert packages and packages | {"setup.py"} <= copied, (packages, copied)
    (wheel,) = [instruction.words() for instruction in build if instruction.keyword == "RUN"]
    assert wheel[:2] == ["pip", "wheel"] and wheel[wheel.index("--wheel-dir") + 1] == "/wheels" and wheel[-1] == "."
    # ... and installed in the runtime stage, from the build stage, under the committed constraints.
    (install,) = [instruction for instruction in runtime
                  if instruction.keyword == "RUN" and instruction.words()[:2] == ["pip", "install"]]
    mounts = [_mount(value) for value in install.flag_values("mount")]
    assert {"type": "bind", "from": "build", "source": "/wheels", "target": "/wheels"} in mounts
    (constraints_mount,) = [mount for mount in mounts if mount["target"] == "/tmp/constraints.txt"]
    assert os.path.join(ROOT, constraints_mount["source"]) == constraints.path(image)
    assert install.words() == ["pip", "install", "--no-cache-dir", "--constraint", "/tmp/constraints.txt",
                               "/wheels/kic-*.whl", *constraints.EXTRA_REQUIREMENTS[image]]


@pytest.mark.parametrize("image", constraints.IMAGES)
def test_dockerfile_runs_as_a_user_with_a_home_and_can_prefetch_weights(image):
    _, runtime = _stages(image)
    keywords = [instruction.keyword for instruction in runtime]
    users = [instruction.arguments for instruction in runtime if instruction.keyword == "USER"]
    assert users and users[-1] == "1000"
    assert [instruction.arguments for instruction in runtime if instruction.keyword == "WORKDIR"][-1] == "/home/kic"
    assert _environment(runtime)["HOME"] == "/home/kic"
    # ARG is per stage: declared in this one, before the RUN that reads it.
    arg = keywords.index("ARG")
    assert runtime[arg].variables() == {"PREFETCH_BACKBONES": ""}
    (prefetch,) = [instruction for instruction in runtime[arg:]
                   if instruction.keyword == "RUN" and "prefetch_weights" in instruction.arguments]
    assert "python -m kic.model.prefetch_weights ${PREFETCH_BACKBONES}" in prefetch.arguments
    assert importlib.util.find_spec("kic.model.prefetch_weights") is not None  # the module it runs exists
    assert keywords.index("USER") < runtime.index(prefetch)  # the weights land in the user's Keras cache


def test_the_gpu_image_finds_the_gke_driver_libraries():
    gpu, cpu = _environment(_stages("gpu")[-1]), _environment(_stages("cpu")[-1])
    assert "/usr/local/nvidia/lib64" in gpu["LD_LIBRARY_PATH"].split(":")
    assert "LD_LIBRARY_PATH" not in cpu
