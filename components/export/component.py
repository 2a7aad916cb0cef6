"""export: a SavedModel serving raw image bytes, packaged like the reference algorithm's."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kic.components import docs
from kic.components.image import CPU_IMAGE


def export(
    model: Input[Model],
    evaluation: Input[Metrics],
    package: Output[Model],
    examples: Input[Dataset] = None,
    destination_uri: str = "",
    run_id: str = "",
    tflite: str = "",
    top_k: int = 5,
    serving_skew_action: str = "block",
) -> NamedTuple("Exported", [("saved_model_uri", str), ("model_labels", dict), ("model_description", str)]):
    arguments = dict(locals())
    from kic.runtime import steps

    return steps.export_step(**arguments)


export.__doc__ = docs.docstring(
    "Exports the trained model as a SavedModel whose serving signature takes encoded image bytes, "
    "verifies it against the Keras model, and packages it as model.tar.gz.",
    {
        "model": "The trained model from train.",
        "evaluation": "Evaluation metrics, recorded in the package's model info.",
        "examples": "Optional: the prepared dataset from prepare. The served answers on the original files of "
                    "its evaluation split are compared with the evaluate path on the prepared records: the model's "
                    "input pixels and its answers (serving_parity.json in the package).",
        "destination_uri": "Optional local path or gs:// URI that also receives the package: under "
                           "<destination_uri>/<run_id>/ (a _SUCCESS marker written last), then "
                           "<destination_uri>/LATEST names that folder; without run_id, in destination_uri itself.",
        "run_id": "The pipeline run's id (the pipeline passes its job id): each run publishes its own version.",
        **docs.parameter_args("tflite"),
        "top_k": "Number of top labels the serving signature returns.",
        **docs.parameter_args("serving_skew_action"),
    },
    {
        "package": "The serving package: 1/ (SavedModel), label map, model info, and model.tar.gz.",
        "saved_model_uri": "URI of the package's SavedModel folder (1/), for a model registry.",
        "model_labels": "Labels for a model registry (backbone, input size, classes, mode, kic version), in Google "
                        "Cloud's label alphabet.",
        "model_description": "One line for a model registry: backbone, input size, classes, test accuracy.",
    },
)
export = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(export)
