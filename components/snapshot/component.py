"""snapshot: fingerprints of what the sources are now, so that cached steps rerun when, and only when, they change."""

from typing import NamedTuple

from kfp import dsl

from kic.components import docs
from kic.components.image import CPU_IMAGE


def snapshot(
    data_source: str,
    validation_source: str = "",
    test_source: str = "",
    tfds_data_dir: str = "",
    base_model_uri: str = "",
    baseline_model_uri: str = "",
) -> NamedTuple("Snapshot", [("data", str), ("base_model", str), ("baseline_model", str)]):
    arguments = dict(locals())
    from kic.orchestration import steps

    return steps.snapshot_step(**arguments)


snapshot.__doc__ = docs.docstring(
    "Fingerprints the training, validation and test sources and the earlier and baseline models as they are "
    "now (names, sizes and versions of their files; a manifest's content; a TFDS dataset's version). Never "
    "cached: prepare, train and evaluate take these fingerprints as inputs, so a scheduled run reuses their "
    "cached outputs while nothing changed and reruns them when something did.",
    docs.parameter_args("data_source", "validation_source", "test_source", "tfds_data_dir", "base_model_uri",
                        "baseline_model_uri"),
    {
        "data": "Fingerprint of the training, validation and test sources: an input of prepare.",
        "base_model": "Fingerprint of base_model_uri (empty when none): an input of train.",
        "baseline_model": "Fingerprint of baseline_model_uri (empty when none): an input of evaluate.",
    },
)
snapshot = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(snapshot)
