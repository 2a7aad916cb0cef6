"""evaluate: test-set metrics in the KFP/Vertex UI, a visual report and the quality gate."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from kic.components import docs
from kic.components.image import CPU_IMAGE


def evaluate(
    examples: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
    report: Output[HTML],
    report_markdown: Output[Markdown],
    blessing: Output[Artifact],
    comparison: Output[Metrics],
    gate_metric: str = "",
    gate_minimum: float = 0.0,
    baseline_model_uri: str = "",
    baseline_fingerprint: str = "",
    max_regression: float = 0.01,
    allow_removed_classes: bool = False,
    top_k: int = 5,
) -> bool:
    arguments = dict(locals())
    from kic.runtime import steps

    return steps.evaluate_step(**arguments)


evaluate.__doc__ = docs.docstring(
    "Evaluates the trained model on the test split (validation when there is none) and decides "
    "whether it is good enough to export.",
    {
        "examples": "The prepared dataset from prepare.",
        "model": "The trained model from train.",
        **docs.parameter_args("gate_metric", "gate_minimum"),
        "baseline_model_uri": "The model to compare with (folder or model.tar.gz), on the same test images; empty "
                              "or none: no comparison. The pipeline passes snapshot's, which resolves its default "
                              "(what export_uri/LATEST names).",
        "baseline_fingerprint": "What the baseline model holds now (from snapshot): part of the cache key.",
        **docs.parameter_args("max_regression", "allow_removed_classes"),
        "top_k": "k of the top-k accuracy (reported when there are more than k classes).",
    },
    {
        "metrics": "Scalar metrics (accuracy, top-k, per-class, binary precision/recall/auc/prc).",
        "classification_metrics": "Confusion matrix and, in binary mode, the ROC curve.",
        "evaluation": "The whole evaluation as JSON: every metric, per-class rows, the confusion matrix and "
                      "the curves.",
        "report": "Self-contained HTML evaluation report.",
        "report_markdown": "Markdown summary of the evaluation.",
        "blessing": "The gate's decision and reasons (blessed: true/false in its metadata, and for a blocked model "
                    "the summary \"not exported: ...\" with the numbers and where the report is).",
        "comparison": "The new model against the baseline on the same images: each headline metric as new_<metric>, "
                      "baseline_<metric> and <metric>_change; the numbers of added and removed classes (empty "
                      "without a baseline).",
        "Output": "Whether the model passed the quality gate (blessed).",
    },
)
evaluate = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(evaluate)
