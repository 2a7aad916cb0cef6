"""pytest fixture: real run folders, as KFP's local runner lays them out, for the code that gathers a run's
outputs (kic.orchestration.local_run). Registered for all tests in conftest.py.

The whole pipeline takes minutes; what collecting its outputs depends on is where kfp.local puts each task's
outputs and which folders a cached step's outputs are in. So a pipeline of stand-in steps that write small
files, named as the real pipeline names its tasks and outputs (test_local_run.py's
``test_the_stand_in_pipeline_mirrors_the_real_one`` holds them to pipeline.yaml), runs through kfp.local's
SubprocessRunner via ``local_run.run_compiled_pipeline``: seconds. Should kfp.local change its layout, the
tests that read these folders fail.

``local_runs`` (session scope) runs it three times under one pipeline root, with caching, and yields
:class:`LocalRuns`:

* ``.fresh``     - every step ran in this run's folder; the model blessed and exported, predictions written.
* ``.cached``    - the same arguments again: prepare and evaluate from the cache (their outputs are in
  ``fresh``'s folder), export and batch prediction run again (export is never cached: a version per run;
  so batch prediction has a new input).
* ``.unblessed`` - the gate says no: no export, no predictions.

Each exported package's label map and each prediction hold the name of the run that wrote them, to tell one
run's from another's.
"""

import dataclasses
import os
from typing import NamedTuple

import pytest
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from kic import artifacts

IMAGE = "python:3.11"  # not run: the SubprocessRunner runs each step in this Python


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(examples: Output[Dataset], report_names: list):
    import os

    os.makedirs(examples.path)
    for name in report_names:
        with open(os.path.join(examples.path, name), "w") as handle:
            handle.write(f"report {name}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(examples: Input[Dataset], metrics: Output[Metrics], evaluation: Output[Artifact], report: Output[HTML],
             blessing: Output[Artifact], blessed: bool) -> bool:
    import json

    del examples  # only for the order of the steps
    for output, text in ((metrics, json.dumps({"accuracy": 0.75})), (evaluation, '{"scalars": {"accuracy": 0.75}}'),
                         (report, "<html>evaluation</html>"), (blessing, json.dumps({"blessed": blessed}))):
        with open(output.path, "w") as handle:
            handle.write(text)
    return blessed


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(evaluation: Input[Metrics], package: Output[Model], run_name: str, tarball: str, label_map: str,
           parity_report: str):
    import os
    import tarfile

    del evaluation  # only for the order of the steps
    os.makedirs(package.path)
    with open(os.path.join(package.path, label_map), "w") as handle:
        handle.write(f'{{"{run_name}": 0}}')
    with open(os.path.join(package.path, parity_report), "w") as handle:
        handle.write('{"num_files": 0}')
    with tarfile.open(os.path.join(package.path, tarball), "w:gz") as tar:
        tar.add(os.path.join(package.path, label_map), arcname=label_map)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def batch_predict(package: Input[Model], predictions: Output[Artifact], run_name: str):
    import json

    del package  # only for the order of the steps
    with open(predictions.path, "w") as handle:
        handle.write(json.dumps({"file": "x.jpg", "run": run_name}) + "\n")


class Outputs(NamedTuple):  # as training_pipeline.Outputs
    examples: Dataset
    metrics: Metrics
    evaluation: Artifact
    evaluation_report: HTML
    blessing: Artifact


@dsl.pipeline(name="stand-in-training")
def stand_in_pipeline(blessed: bool) -> Outputs:
    prepared = prepare(report_names=[artifacts.DATA_REPORT_JSON, artifacts.DATA_REPORT_MARKDOWN,
                                     artifacts.DATA_REPORT_HTML])
    evaluated = evaluate(examples=prepared.outputs["examples"], blessed=blessed)
    with dsl.If(evaluated.outputs[artifacts.BLESSED_KEY] == True):  # noqa: E712 (KFP)
        exported = export(evaluation=evaluated.outputs["metrics"], run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                          tarball=artifacts.MODEL_TARBALL, label_map=artifacts.LABEL_MAP,
                          parity_report=artifacts.SERVING_PARITY_REPORT).set_caching_options(False)
        batch_predict(package=exported.outputs["package"], run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
    return Outputs(examples=prepared.outputs["examples"], metrics=evaluated.outputs["metrics"],
                   evaluation=evaluated.outputs["evaluation"], evaluation_report=evaluated.outputs["report"],
                   blessing=evaluated.outputs["blessing"])


@dataclasses.dataclass(frozen=True)
class LocalRuns:
    pipeline_yaml: str
    fresh: object  # kic.orchestration.local_run.LocalRun
    cached: object
    unblessed: object


@pytest.fixture(scope="session")
def local_runs(tmp_path_factory) -> LocalRuns:
    return run_stand_in_pipeline(tmp_path_factory.mktemp("kfp-local"))


def run_stand_in_pipeline(root) -> LocalRuns:
    from kfp import compiler

    from kic.orchestration import local_run

    pipeline_yaml = str(root / "stand-in-pipeline.yaml")
    compiler.Compiler().compile(stand_in_pipeline, pipeline_yaml)
    runs = os.path.join(root, "runs")

    def run(blessed: bool):
        return local_run.run_compiled_pipeline(pipeline_yaml, {"blessed": blessed}, runs, cache=True)

    return LocalRuns(pipeline_yaml=pipeline_yaml, fresh=run(True), cached=run(True), unblessed=run(False))
