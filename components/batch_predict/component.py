"""batch_predict: predictions for a folder, manifest or gs:// prefix of images, in one step."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from kic.components import docs
from kic.components.image import CPU_IMAGE


def batch_predict(
    package: Input[Model],
    inputs: str,
    predictions: Output[Dataset],
    prediction_summary: Output[Metrics],
    output_format: str = "jsonl",
    batch_size: int = 32,
    top_k: int = 5,
):
    arguments = dict(locals())
    from kic.runtime import steps

    steps.batch_predict_step(**arguments)


batch_predict.__doc__ = docs.docstring(
    "Predicts every image of a folder, manifest or gs:// prefix with an exported model. Unreadable files are "
    "listed with their reasons and do not stop the batch.",
    {
        "package": "The exported serving package from export.",
        "inputs": "Images: a folder (searched recursively), a manifest (.csv with a uri column, .txt, .jsonl), "
                  "or a gs:// prefix.",
        "output_format": "jsonl or csv.",
        "batch_size": "Images per model call.",
        "top_k": "Number of top labels per image.",
    },
    {
        "predictions": "One row per file: file, status, predicted label, probabilities, top-k (or the error).",
        "prediction_summary": "Counts of images predicted and failed.",
    },
)
batch_predict = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(batch_predict)
