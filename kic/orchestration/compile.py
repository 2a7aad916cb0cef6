"""Compiles the pipelines (training and tuning) for each target, and every component, to their committed YAML files.

It builds the pipelines, so it sits on the floor above them (pyproject.toml's import floors): nothing the
pipelines import may import it; submit (remote.py) and the CLI, above it, compile through it.
"""

from __future__ import annotations

import os

from kic.pipelines.placement import LOCAL, TARGETS, ClusterOptions

# What each target's pipelines are committed as (kfp is the default pipeline.yaml).
PIPELINE_YAMLS = {"kfp": "pipeline.yaml", "vertex": "pipeline-vertex.yaml"}
PIPELINE_YAML = PIPELINE_YAMLS["kfp"]
TUNING_PIPELINE_YAMLS = {"kfp": "tuning-pipeline.yaml", "vertex": "tuning-pipeline-vertex.yaml"}
TUNING_PIPELINE_YAML = TUNING_PIPELINE_YAMLS["kfp"]
TRAINING_COMPONENTS = ("validate", "snapshot", "prepare", "train", "evaluate", "export", "batch_predict")
TUNING_COMPONENTS = ("plan_trials", "plan_second_wave", "trial", "select_best")  # the tuning pipeline's own
COMPONENT_NAMES = (*TRAINING_COMPONENTS, *TUNING_COMPONENTS)

__all__ = ["COMPONENT_NAMES", "LOCAL", "PIPELINE_YAML", "PIPELINE_YAMLS", "TARGETS", "TRAINING_COMPONENTS",
           "TUNING_COMPONENTS", "TUNING_PIPELINE_YAML", "TUNING_PIPELINE_YAMLS", "ClusterOptions",
           "compile_components", "compile_pipeline", "compile_tuning_pipeline", "require"]


def require(target: str) -> None:
    """Raises MissingDependencyError, naming the extra to install, when ``target`` cannot be compiled here."""
    if target == "vertex":
        from kic.pipelines import model_registry

        model_registry.require_components()


def compile_pipeline(path: str = PIPELINE_YAML, target: str = "kfp", cluster: ClusterOptions | None = None) -> str:
    """Writes the pipeline placed for ``target`` (kfp, vertex, or local for
    ``kic run``); ``cluster`` adds a cluster's node pools and credentials."""
    from kic.pipelines import training_pipeline

    return _compile(training_pipeline.build(_cluster(target, cluster)), path)


def compile_tuning_pipeline(path: str = TUNING_PIPELINE_YAML, target: str = "kfp",
                            cluster: ClusterOptions | None = None, parallelism: int | None = None) -> str:
    """Writes the tuning pipeline placed for ``target``, running at most
    ``parallelism`` trials at once (default kic.tuning.settings.DEFAULT_PARALLELISM)."""
    from kic.pipelines import tuning_pipeline
    from kic.tuning.settings import DEFAULT_PARALLELISM

    return _compile(tuning_pipeline.build(_cluster(target, cluster), parallelism or DEFAULT_PARALLELISM), path)


def _cluster(target: str, cluster: ClusterOptions | None) -> ClusterOptions:
    cluster = cluster or ClusterOptions(target=target)
    if cluster.target != target:
        raise ValueError(f"cluster options for {cluster.target!r} given with target {target!r}")
    return cluster


def _compile(pipeline, path: str) -> str:
    from kfp import compiler

    compiler.Compiler().compile(pipeline, package_path=path)
    return path


def component_yaml_path(name: str) -> str:
    import importlib

    package = importlib.import_module(f"kic.components.{name}")
    return os.path.join(os.path.dirname(package.__file__), "component.yaml")


def compile_components(output_dir: str | None = None) -> list[str]:
    """Writes ``<name>/component.yaml`` beside each component (or under output_dir)."""
    import importlib

    from kfp import compiler

    paths = []
    for name in COMPONENT_NAMES:
        component = getattr(importlib.import_module(f"kic.components.{name}.component"), name)
        path = (os.path.join(output_dir, name, "component.yaml") if output_dir else component_yaml_path(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        compiler.Compiler().compile(component, package_path=path)
        paths.append(path)
    return paths
