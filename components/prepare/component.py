"""prepare: raw images -> validated, stratified TFRecord splits, label map, data report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from kic.components import docs
from kic.components.image import IMAGE


def prepare(
    source: str,
    examples: Output[Dataset],
    report: Output[HTML],
    report_markdown: Output[Markdown],
    data_metrics: Output[Metrics],
    validation_source: str = "",
    test_source: str = "",
    validation_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 42,
    image_short_side: int = 600,
    images_per_shard: int = 1024,
    max_rejected_fraction: float = 0.05,
    tfds_data_dir: str = "",
):
    arguments = dict(locals())
    from kic import steps

    steps.prepare_step(**arguments)


prepare.__doc__ = docs.docstring(
    "Validates a folder-per-class image set and writes deterministic, stratified splits.",
    {
        "source": "Training images: a local folder or gs:// prefix laid out as <root>/<class>/<file>, a "
                  "manifest (.csv with uri,label or .jsonl), or tfds:NAME[:CONFIG].",
        "validation_source": "Optional separate validation images (same kinds of source); empty: split "
                             "validation_fraction off the training source.",
        "test_source": "Optional separate test images; empty: split test_fraction off the training source.",
        "validation_fraction": "Share of each class held out for validation when no validation_source.",
        "test_fraction": "Share of each class held out for testing when no test_source (0: no test split).",
        "seed": "Seed of the split; the same seed and files always give the same splits.",
        "image_short_side": "Images are downscaled so their short side is at most this many pixels.",
        "images_per_shard": "Records per TFRecord shard.",
        "max_rejected_fraction": "Fail (after writing the report) when a larger share of files is rejected.",
        "tfds_data_dir": "Directory of a pre-downloaded TFDS copy, for tfds: sources.",
    },
    {
        "examples": "The prepared dataset: TFRecord shards per split, the label map and dataset_info.json.",
        "report": "The data report as a self-contained HTML page.",
        "report_markdown": "The data report as Markdown.",
        "data_metrics": "Key counts: images per split, classes, rejected files, duplicates.",
    },
)
prepare = dsl.component(base_image=IMAGE, install_kfp_package=False)(prepare)
