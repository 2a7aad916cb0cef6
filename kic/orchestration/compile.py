"""Compiles the pipeline and every component to their committed YAML files."""

from __future__ import annotations

import os

PIPELINE_YAML = "pipeline.yaml"
COMPONENT_NAMES = ("validate", "prepare", "train", "evaluate", "export", "batch_predict")


def compile_pipeline(path: str = PIPELINE_YAML) -> str:
    from kfp import compiler

    from kic.pipelines.training_pipeline import training_pipeline

    compiler.Compiler().compile(training_pipeline, package_path=path)
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
