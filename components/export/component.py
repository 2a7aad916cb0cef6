"""export: a SavedModel serving raw image bytes, packaged like the reference algorithm's."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kic.components import docs
from kic.components.image import IMAGE


def export(
    model: Input[Model],
    evaluation: Input[Metrics],
    package: Output[Model],
    examples: Input[Dataset] = None,
    destination_uri: str = "",
    tflite: str = "",
    top_k: int = 5,
):
    arguments = dict(locals())
    from kic.orchestration import steps

    steps.export_step(**arguments)


export.__doc__ = docs.docstring(
    "Exports the trained model as a SavedModel whose serving signature takes encoded image bytes, "
    "verifies it against the Keras model, and packages it as model.tar.gz.",
    {
        "model": "The trained model from train.",
        "evaluation": "Evaluation metrics, recorded in the package's model info.",
        "examples": "Optional: the prepared dataset from prepare. The served answers on the original files of "
                    "its evaluation split are compared with the evaluate path on the prepared records "
                    "(serving_parity.json in the package); a clearly systematic skew fails the export.",
        "destination_uri": "Optional local path or gs:// URI that also receives the package (a _SUCCESS "
                           "marker is written last).",
        **docs.parameter_args("tflite"),
        "top_k": "Number of top labels the serving signature returns.",
    },
    {"package": "The serving package: 1/ (SavedModel), label map, model info, and model.tar.gz."},
)
export = dsl.component(base_image=IMAGE, install_kfp_package=False)(export)
