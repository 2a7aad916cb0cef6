"""Writes images/constraints-cpu.txt and images/constraints-gpu.txt: every package each image installs, pinned.

    python3 images/constraints.py

Run it after changing setup.py's install_requires (a test fails until you do). It
asks pip, which needs PyPI, to resolve the images' requirements: the kic wheel's
(setup.py's install_requires), plus tensorflow[and-cuda] in the GPU image. The
CPU image is resolved under the GPU image's pins, so both run the same versions
of everything they share (train writes the model the CPU steps load). pip
resolves for the interpreter it runs on, so this refuses to run anywhere but
the images' platform; elsewhere, run it in their base image:

    docker run --rm -v "$PWD:/src" -w /src python:3.11-slim-bookworm python3 images/constraints.py

A file's text is ``render(image, requirements, pins)``: given the same inputs it
is the same, so a test checks offline that the committed files are what this
script writes for their pins and setup.py's requirements.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SETUP_PY = os.path.join(os.path.dirname(HERE), "setup.py")
BASE_IMAGE = "python:3.11-slim-bookworm"  # both Dockerfiles' FROM (a test checks)
PYTHON_VERSION = (3, 11)
IMAGES = ("cpu", "gpu")
EXTRA_REQUIREMENTS = {"cpu": [], "gpu": ["tensorflow[and-cuda]"]}  # installed beside the wheel


def path(image: str) -> str:
    return os.path.join(HERE, f"constraints-{image}.txt")


def install_requires(setup_py: str = SETUP_PY) -> list[str]:
    """setup.py's install_requires, read without running setup.py."""
    with open(setup_py, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), setup_py)
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{setup_py} has no install_requires list")


def canonical(name: str) -> str:
    """The normalised project name of PEP 503, under which pip and PyPI compare names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def render(image: str, requirements: list[str], pins: dict[str, str]) -> str:
    inputs = [*requirements, *EXTRA_REQUIREMENTS[image]]
    header = [
        f"# Every package of the kic-{image} image (images/{image}.Dockerfile), pinned.",
        "# Written by images/constraints.py (do not edit): what pip installs into",
        f"# {BASE_IMAGE} for",
        *(f"#   {requirement}" for requirement in inputs),
    ]
    lines = sorted(f"{canonical(name)}=={version}" for name, version in pins.items())
    return "\n".join([*header, *lines]) + "\n"


def parse(text: str) -> dict[str, str]:
    """Pins of a constraints file: canonical name -> version."""
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name.strip())] = version.strip()
    return pins


def resolve(requirements: list[str], constraints: dict[str, str] | None = None) -> dict[str, str]:
    """What pip would install for ``requirements`` into an empty environment of this interpreter."""
    with tempfile.TemporaryDirectory() as scratch:
        requirements_file, constraints_file = (os.path.join(scratch, name) for name in ("in.txt", "constraints.txt"))
        report = os.path.join(scratch, "report.json")
        with open(requirements_file, "w", encoding="utf-8") as handle:
            handle.write("\n".join(requirements) + "\n")
        with open(constraints_file, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}=={version}\n" for name, version in (constraints or {}).items()))
        # --isolated: this machine's pip configuration (indexes, constraints) is not the image's.
        subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                        "--quiet", "--report", report, "--requirement", requirements_file,
                        "--constraint", constraints_file], check=True)
        with open(report, encoding="utf-8") as handle:
            installed = json.load(handle)["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}


def main() -> int:
    here = (sys.platform, platform.machine(), sys.version_info[:2])
    if here != ("linux", "x86_64", PYTHON_VERSION):
        print(f"constraints.py resolves for the interpreter it runs on ({here}), which must be the images': "
              f"CPython {'.'.join(map(str, PYTHON_VERSION))} on linux x86_64. Run it in {BASE_IMAGE} "
              "(see this script's docstring).", file=sys.stderr)
        return 1
    requirements = install_requires()
    gpu = resolve([*requirements, *EXTRA_REQUIREMENTS["gpu"]])
    cpu = resolve(requirements, constraints=gpu)
    for image, pins in (("cpu", cpu), ("gpu", gpu)):
        with open(path(image), "w", encoding="utf-8") as handle:
            handle.write(render(image, requirements, pins))
        print(f"wrote {path(image)} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
