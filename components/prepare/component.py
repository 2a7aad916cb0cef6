"""prepare: raw images -> validated, stratified TFRecord splits, label map, data report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from kic.components import docs
from kic.components.image import CPU_IMAGE


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
    source_fingerprint: str = "",
):
    arguments = dict(locals())
    from kic.runtime import steps

    steps.prepare_step(**arguments)


prepare.__doc__ = docs.docstring(
    "Validates a folder-per-class image set and writes deterministic, stratified splits.",
    {
        "source": docs.parameter_args("data_source")["data_source"],
        **docs.parameter_args("validation_source", "test_source", "validation_fraction", "test_fraction"),
        "seed": docs.parameter_args("split_seed")["split_seed"],
        "image_short_side": "Images are downscaled so their short side is at most this many pixels.",
        "images_per_shard": "Records per TFRecord shard.",
        **docs.parameter_args("max_rejected_fraction", "tfds_data_dir"),
        "source_fingerprint": "What the sources are now (from snapshot): recorded with the dataset, and part of the "
                              "cache key, so changed images are prepared anew.",
    },
    {
        "examples": "The prepared dataset: TFRecord shards per split, the label map and dataset_info.json.",
        "report": "The data report as a self-contained HTML page.",
        "report_markdown": "The data report as Markdown.",
        "data_metrics": "Key counts: images per split, classes, rejected files, duplicates.",
    },
)
prepare = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(prepare)
