"""Downloads backbones' ImageNet weights into the Keras cache, where training looks first.

    python -m kic.model.prefetch_weights BACKBONE[:IMAGE_SIZE] ...

For clusters without internet access: the container images run it at build
time (build argument PREFETCH_BACKBONES), so train finds the weights in the
image. The file, its origin and its hash are asked of Keras
(``weights.imagenet_source``), and Keras' own download function fetches and
checks it; a file already in the cache with the right hash is kept. Some
families' weights depend on the input size (MobileNet): ``NAME:SIZE`` fetches
the file for an ``image_size`` other than the backbone's native one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from kic.errors import ParameterError, Problem, UserError
from kic.model import backbone_registry, weights


def parse(argument: str) -> tuple[backbone_registry.Backbone, int]:
    """``NAME`` or ``NAME:IMAGE_SIZE`` -> (backbone, image size in pixels)."""
    name, _, size_text = argument.partition(":")
    backbone = backbone_registry.resolve(name)
    if not size_text:
        return backbone, backbone.input_size
    if not size_text.isdigit():
        raise ParameterError([Problem("image_size", size_text, "a whole number of pixels (NAME:SIZE)")])
    size = int(size_text)
    problems = backbone_registry.image_size_problems(backbone, size)
    if problems:
        raise ParameterError(problems)
    return backbone, size or backbone.input_size


def prefetch(backbone: backbone_registry.Backbone, image_size: int, log: Callable[[str], None] = print) -> str:
    """Puts the backbone's ImageNet weights for ``image_size`` into the Keras cache; returns the file's path."""
    from keras.utils import get_file

    source = weights.imagenet_source(backbone, image_size)
    cache_dir, cache_subdir = os.path.split(os.path.dirname(source.cache_path))
    try:
        with weights.download_timeout():
            path = get_file(os.path.basename(source.cache_path), source.origin, file_hash=source.file_hash,
                            cache_dir=cache_dir, cache_subdir=cache_subdir)
    except Exception as error:
        if not weights.is_download_failure(error):
            raise
        if os.path.exists(source.cache_path):  # Keras leaves a file that failed its hash check behind
            os.remove(source.cache_path)
        raise weights.download_error(backbone, error) from None
    if os.path.realpath(path) != os.path.realpath(source.cache_path):
        raise RuntimeError(f"Keras stored {source.origin} at {path}, not at {source.cache_path} where it looks")
    log(f"{backbone.name} at {image_size} px: {path} ({os.path.getsize(path):,} bytes)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kic.model.prefetch_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("backbones", nargs="+", metavar="BACKBONE[:IMAGE_SIZE]",
                        help="backbone names as `kic backbones` lists them")
    args = parser.parse_args(argv)
    try:
        chosen = [parse(argument) for argument in args.backbones]  # every name checked before any download
        for backbone, image_size in chosen:
            prefetch(backbone, image_size)
    except UserError as error:
        print(f"prefetch_weights: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
