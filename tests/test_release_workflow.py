"""The release: .github/workflows/release.yml and the images/build.sh it runs. Offline: docker, kic and gh are
stand-ins that record their arguments, and only the workflow's own scripts run, by step id, never its
`uses:` steps nor the one that frees disk space on the runner."""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest
import yaml

import kic
from kic.orchestration.compile import COMPONENT_NAMES, PIPELINE_YAMLS, TUNING_PIPELINE_YAMLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_PATH = os.path.join(ROOT, ".github", "workflows", "release.yml")
BUILD_SH = os.path.join(ROOT, "images", "build.sh")
TAG = f"v{kic.__version__}"


def _workflow() -> dict:
    with open(WORKFLOW_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True


def _steps() -> list[dict]:
    (job,) = _workflow()["jobs"].values()
    return job["steps"]


def _step(step_id: str) -> dict:
    (step,) = [step for step in _steps() if step.get("id") == step_id]
    return step


def _render(text: str, context: dict[str, str]) -> str:
    """The step's ${{ ... }} expressions, from context; any other is a failure, not an empty string."""

    def value(match: re.Match) -> str:
        assert match.group(1) in context, f"the test knows no value for ${{{{ {match.group(1)} }}}}"
        return context[match.group(1)]

    return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", value, text)


def _run_step(step_id: str, tmp_path, context: dict[str, str], cwd: str, path: str = "",
              **env: str) -> subprocess.CompletedProcess:
    """Runs one step's script as a runner would: its shell's flags, its env, the runner's variables."""
    step = _step(step_id)
    shell = step.get("shell") or ((_workflow().get("defaults") or {}).get("run") or {}).get("shell")
    # What GitHub runs for each: only an explicit `shell: bash` adds pipefail.
    command = {"bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail"], None: ["bash", "-e"]}[shell]
    script = tmp_path / f"{step_id}.sh"
    script.write_text(_render(step["run"], context))
    environment = {"PATH": path + os.environ["PATH"], "HOME": str(tmp_path), "RUNNER_TEMP": str(tmp_path),
                   "GITHUB_OUTPUT": str(tmp_path / "output"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
                   "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": TAG}
    environment.update({name: _render(str(value), context) for name, value in step.get("env", {}).items()})
    environment.update(env)
    return subprocess.run([*command, str(script)], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=60)


def _executable(path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


# A stand-in that appends its arguments, as one JSON list, to $CALLS.
RECORD = 'python3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$(basename "$0")" "$@" >> "$CALLS"\n'


def _calls(path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------ the workflow
def test_released_by_a_version_tag_or_by_hand_only():
    triggers = _triggers(_workflow())
    assert set(triggers) == {"push", "workflow_dispatch"}
    assert triggers["push"] == {"tags": ["v*"]}  # a branch filter would release every push to it


def test_may_push_packages_and_write_the_release():
    workflow = _workflow()
    (job,) = workflow["jobs"].values()
    permissions = {**workflow.get("permissions", {}), **job.get("permissions", {})}
    assert permissions["packages"] == "write" and permissions["contents"] == "write"


def test_actions_are_pinned_to_a_major_version_and_log_in_to_ghcr_with_the_jobs_token():
    used = {step["uses"].partition("@")[0]: step for step in _steps() if "uses" in step}
    assert set(used) == {"actions/checkout", "actions/setup-python", "docker/setup-buildx-action",
                         "docker/login-action"}
    for step in used.values():
        assert re.fullmatch(r"[\w./-]+@v\d+", step["uses"]), step["uses"]
    assert used["docker/login-action"]["with"] == {
        "registry": "ghcr.io", "username": "${{ github.actor }}", "password": "${{ secrets.GITHUB_TOKEN }}"}
    assert str(used["actions/setup-python"]["with"]["python-version"]) == "3.11"


def test_steps_run_in_an_order_that_fails_before_pushing_anything():
    steps = _steps()
    position = {step.get("id") or step.get("uses", "").partition("@")[0]: index for index, step in enumerate(steps)}
    (install,) = [index for index, step in enumerate(steps) if "pip install" in step.get("run", "")]
    assert 'pip install -e ".[vertex]"' in steps[install]["run"]  # kic compile writes the Vertex YAMLs too
    assert position["actions/checkout"] < position["version"] < position["images"]
    assert install < position["images"] and position["docker/login-action"] < position["images"]
    assert position["images"] < position["summary"] < position["release"]


@pytest.mark.parametrize(("ref_type", "ref_name", "passes"), [
    ("tag", TAG, True),
    ("tag", f"{TAG}.1", False),
    ("tag", kic.__version__, False),  # without the v
    ("branch", TAG, False),  # workflow_dispatch started on a branch named like the tag
])
def test_the_version_check_compares_the_tag_with_kic_init(tmp_path, ref_type, ref_name, passes):
    result = _run_step("version", tmp_path, {}, ROOT, GITHUB_REF_TYPE=ref_type, GITHUB_REF_NAME=ref_name)
    assert (result.returncode == 0) == passes, result.stdout + result.stderr
    if not passes:
        assert f"is not {TAG}, the __version__ of kic/__init__.py" in result.stdout


def _fake_build_sh(tmp_path, exit_code: int = 0) -> str:
    (tmp_path / "checkout" / "images").mkdir(parents=True)
    _executable(tmp_path / "checkout" / "images" / "build.sh",
                f"#!/usr/bin/env bash\n{RECORD}echo building\n"
                f'echo "KIC_IMAGE_CPU=$1/kic-cpu@sha256:{"c" * 64}"\n'
                f'echo "KIC_IMAGE_GPU=$1/kic-gpu@sha256:{"9" * 64}"\n'
                f"exit {exit_code}\n")
    return str(tmp_path / "checkout")


def test_the_build_step_runs_build_sh_for_the_lower_cased_ghcr_owner_and_outputs_its_references(tmp_path):
    checkout = _fake_build_sh(tmp_path)
    result = _run_step("images", tmp_path, {"github.repository_owner": "Kic-Project"}, checkout,
                       CALLS=str(tmp_path / "calls"))
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path / "calls") == [["build.sh", "ghcr.io/kic-project"]]
    assert (tmp_path / "output").read_text().splitlines() == [
        f"KIC_IMAGE_CPU=ghcr.io/kic-project/kic-cpu@sha256:{'c' * 64}",
        f"KIC_IMAGE_GPU=ghcr.io/kic-project/kic-gpu@sha256:{'9' * 64}"]


def test_a_failed_build_fails_the_step_though_its_output_goes_through_tee(tmp_path):
    checkout = _fake_build_sh(tmp_path, exit_code=3)
    result = _run_step("images", tmp_path, {"github.repository_owner": "kic-project"}, checkout,
                       CALLS=str(tmp_path / "calls"))
    assert result.returncode != 0


def test_the_summary_shows_the_pinned_references_and_becomes_the_release_notes(tmp_path):
    cpu, gpu = f"ghcr.io/o/kic-cpu@sha256:{'c' * 64}", f"ghcr.io/o/kic-gpu@sha256:{'9' * 64}"
    context = {"steps.images.outputs.KIC_IMAGE_CPU": cpu, "steps.images.outputs.KIC_IMAGE_GPU": gpu}
    result = _run_step("summary", tmp_path, context, str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / "summary").read_text()
    assert f"KIC_IMAGE_CPU={cpu}\nKIC_IMAGE_GPU={gpu}\n" in summary
    assert f"kic compile --image-cpu {cpu} --image-gpu {gpu}" in summary
    assert (tmp_path / "notes.md").read_text() == summary


@pytest.mark.parametrize("exists", [False, True])
def test_the_release_gets_every_pipeline_and_a_tarball_of_every_component(tmp_path, exists):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `gh release view` answers whether the release exists: a rerun replaces the assets of the one it made.
    _executable(bin_dir / "gh", f'#!/usr/bin/env bash\n{RECORD}[[ $2 != view ]] || exit {0 if exists else 1}\n')
    context = {"github.token": "token", "github.repository": "kic-project/kic"}
    result = _run_step("release", tmp_path, context, ROOT, path=f"{bin_dir}{os.pathsep}",
                       CALLS=str(tmp_path / "calls"))
    assert result.returncode == 0, result.stderr
    calls = _calls(tmp_path / "calls")
    assert calls[0][:3] == ["gh", "release", "view"] and len(calls) == 2
    tarball = str(tmp_path / f"kic-components-{TAG}.tar.gz")
    assets = [*PIPELINE_YAMLS.values(), *TUNING_PIPELINE_YAMLS.values(), tarball]
    if exists:
        assert calls[1] == ["gh", "release", "upload", TAG, "--clobber", *assets]
    else:
        assert calls[1][:4] == ["gh", "release", "create", TAG] and calls[1][-len(assets):] == assets
        assert "--verify-tag" in calls[1]  # never a new tag on the default branch's head
        assert calls[1][calls[1].index("--notes-file") + 1] == str(tmp_path / "notes.md")
    with tarfile.open(tarball) as archive:
        assert sorted(archive.getnames()) == sorted(f"components/{name}/component.yaml" for name in COMPONENT_NAMES)


def _tool(name: str) -> str | None:
    """On PATH or in the running virtualenv's bin, where pip puts it even when the venv is not activated."""
    return shutil.which(name, path=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")


def test_actionlint_passes_with_its_shellcheck_check():
    actionlint, shellcheck = _tool("actionlint"), _tool("shellcheck")
    if not actionlint or not shellcheck:
        pytest.skip("needs actionlint and shellcheck (CI's lint step installs them)")
    # actionlint finds shellcheck on PATH only, and without it skips the run: scripts silently.
    env = {**os.environ, "PATH": f"{os.path.dirname(shellcheck)}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([actionlint, "-no-color", os.path.relpath(WORKFLOW_PATH, ROOT)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ images/build.sh
def _digest(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


@pytest.fixture
def stand_ins(tmp_path):
    """docker and kic that record their arguments; docker's buildx build writes the metadata file the way
    buildx does, with a digest derived from the tag."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "docker", f"""#!/usr/bin/env bash
{RECORD}while (($#)); do
  case $1 in --tag) tag=$2 ;; --metadata-file) metadata=$2 ;; esac
  shift
done
digest=$(python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())' "$tag")
printf '{{"containerimage.digest": "sha256:%s"}}' "$digest" > "$metadata"
""")
    _executable(bin_dir / "kic", f"#!/usr/bin/env bash\n{RECORD}echo wrote pipeline.yaml\n")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
            "PREFETCH_BACKBONES": "mobilenet_v2_100_224 efficientnet_b0"}


def _build(registry: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", BUILD_SH, registry], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("argument", "registry"), [("ghcr.io/kic-test", "ghcr.io/kic-test"),
                                                    ("localhost:5000/kic/", "localhost:5000/kic")])
def test_build_sh_pushes_both_images_then_recompiles_everything_pinned_by_digest(stand_ins, tmp_path, argument,
                                                                                registry):
    result = _build(argument, stand_ins)
    assert result.returncode == 0, result.stderr
    *builds, compile_ = _calls(tmp_path / "calls")
    pinned = {}
    for image, call in zip(("cpu", "gpu"), builds, strict=True):
        assert call[:3] == ["docker", "buildx", "build"] and call[-1] == "."
        options = dict(zip(call[3:-1], call[4:-1], strict=False))
        assert "--push" in call and options["--platform"] == "linux/amd64"
        assert options["--file"] == f"images/{image}.Dockerfile"
        assert options["--tag"] == f"{registry}/kic-{image}:{kic.__version__}"
        assert options["--build-arg"] == "PREFETCH_BACKBONES=mobilenet_v2_100_224 efficientnet_b0"
        pinned[image] = f"{registry}/kic-{image}@sha256:{_digest(options['--tag'])}"
    # No --target, --output nor --no-components: every committed YAML, both targets.
    assert compile_ == ["kic", "compile", "--image-cpu", pinned["cpu"], "--image-gpu", pinned["gpu"]]
    assert result.stdout.splitlines()[-2:] == [f"KIC_IMAGE_CPU={pinned['cpu']}", f"KIC_IMAGE_GPU={pinned['gpu']}"]


@pytest.mark.parametrize(("registry", "reason"), [
    ("https://ghcr.io/kic-test", "no scheme"),
    ("ghcr.io/kic-test:0.1.0", "no tag"),
    (f"ghcr.io/kic-test@sha256:{'0' * 64}", "no digest"),
    ("ghcr.io/Kic-Test", "lower-case"),
    ("ghcr.io/kic test", "not a registry path"),
])
def test_build_sh_refuses_what_is_not_a_registry_path_before_building(stand_ins, tmp_path, registry, reason):
    result = _build(registry, stand_ins)
    assert result.returncode != 0
    assert f"images/build.sh: {registry}: " in result.stderr and reason in result.stderr
    assert _calls(tmp_path / "calls") == []
