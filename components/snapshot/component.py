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
    pretrained_weights: str = "",
    search_space: str = "",
    export_uri: str = "",
) -> NamedTuple("Snapshot", [("data", str), ("base_model", str), ("baseline_model", str),
                             ("pretrained_weights", str), ("search_space", str), ("baseline_model_uri", str)]):
    arguments = dict(locals())
    from kic.runtime import steps

    return steps.snapshot_step(**arguments)


snapshot.__doc__ = docs.docstring(
    "Fingerprints what can change in place under the same name, as it is now: the training, validation and test "
    "sources (names, sizes and versions of their files; a manifest's content and the sizes and versions of the "
    "files it names; a TFDS dataset's version), the earlier and baseline models and a pretrained weights file "
    "(their files' names, sizes and versions), and a search space file (its content); and resolves the baseline "
    "(by default what export_uri/LATEST names). Never cached: prepare, "
    "train, evaluate, plan_trials and the trials take these fingerprints as inputs, so a scheduled run reuses "
    "their cached outputs while nothing changed and reruns them when something did.",
    {
        **docs.parameter_args("data_source", "validation_source", "test_source", "tfds_data_dir", "base_model_uri",
                              "baseline_model_uri", "pretrained_weights"),
        "search_space": "The tuning pipeline's search space (JSON text, or a JSON file's path or gs:// URI); "
                        "empty in the training pipeline.",
        "export_uri": "Where versions are published: with an empty baseline_model_uri, the baseline is the model "
                      "its LATEST names.",
    },
    {
        "data": "Fingerprint of the training, validation and test sources: an input of prepare.",
        "base_model": "Fingerprint of base_model_uri (empty when none): an input of train.",
        "baseline_model": "Fingerprint of the baseline model (empty when none): an input of evaluate.",
        "pretrained_weights": "Fingerprint of the pretrained weights file (empty for imagenet and none): an input "
                              "of train and of the trials.",
        "search_space": "Fingerprint of the search space file's content (empty for JSON text, which is a cache key "
                        "itself): an input of plan_trials.",
        "baseline_model_uri": "The model evaluate compares the new one with: baseline_model_uri, or what "
                              "export_uri/LATEST names now when it is empty; empty for none.",
    },
)
snapshot = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(snapshot)
