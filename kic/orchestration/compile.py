"""Compiles the pipeline for each target, and every component, to their committed YAML files."""

from __future__ import annotations

import os

from kic.orchestration.placement import LOCAL, TARGETS, ClusterOptions

# What each target's pipeline is committed as (kfp is the default pipeline.yaml).
PIPELINE_YAMLS = {"kfp": "pipeline.yaml", "vertex": "pipeline-vertex.yaml"}
PIPELINE_YAML = PIPELINE_YAMLS["kfp"]
COMPONENT_NAMES = ("validate", "snapshot", "prepare", "train", "evaluate", "export", "batch_predict")

__all__ = ["COMPONENT_NAMES", "LOCAL", "PIPELINE_YAML", "PIPELINE_YAMLS", "TARGETS", "ClusterOptions",
           "compile_components", "compile_pipeline", "require"]


def require(target: str) -> None:
    """Raises MissingDependencyError, naming the extra to install, when ``target`` cannot be compiled here."""
    if target == "vertex":
        from kic.pipelines import model_registry

        model_registry.require_components()


def compile_pipeline(path: str = PIPELINE_YAML, target: str = "kfp", cluster: ClusterOptions | None = None) -> str:
    """Writes the pipeline placed for ``target`` (kfp, vertex, or local for
    ``kic run``); ``cluster`` adds a cluster's node pools and credentials."""
    from kfp import compiler

    from kic.pipelines import training_pipeline

    cluster = cluster or ClusterOptions(target=target)
    if cluster.target != target:
        raise ValueError(f"cluster options for {cluster.target!r} given with target {target!r}")
    compiler.Compiler().compile(training_pipeline.build(cluster), package_path=path)
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
