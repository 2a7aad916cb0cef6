"""Deterministic, stratified, file-level train/validation/test splits.

Every image is identified by the sha256 of its content. Within a class,
images are ranked by a seeded hash of that digest, and the first ranks go to
validation, the next to test, the rest to train. So a split depends only on
the seed and the set of images: not on listing order, file names, worker
count or where the files are stored, and adding images to a class moves few
of the old ones.

Per-class counts use largest-remainder rounding, so each split is within one
image of its requested share, except that every requested split gets at
least one image of every class (which may take one more from train).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

from kic.data.sources import SourceError
from kic.errors import Problem

SPLIT_ORDER = ("validation", "test", "train")  # ranks are handed out in this order
MIN_SHARDS = 4
DEFAULT_VALIDATION_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_SEED = 42


def fraction_problems(*, validation_fraction: float, test_fraction: float, validation_source: str = "",
                      test_source: str = "", need_validation: bool = True) -> list[Problem]:
    """The split fractions' rules: each in [0, 1), and training images left
    over; with ``need_validation`` (training picks its best epoch on validation
    images), a validation split from the fraction or an explicit source. A
    fraction is unused where its split has its own source."""
    problems = []
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            problems.append(Problem(name, value, "a number in [0, 1)"))
    if problems:
        return problems
    if need_validation and validation_fraction == 0 and not validation_source:
        problems.append(Problem("validation_fraction", validation_fraction,
                                "above 0 unless validation_source is given: training picks its best epoch on "
                                "validation images"))
    held_out = (0.0 if validation_source else validation_fraction) + (0.0 if test_source else test_fraction)
    if held_out >= 1.0:
        problems.append(Problem("validation_fraction+test_fraction", round(held_out, 9),
                                "must leave training images: below 1"))
    return problems


def split_fractions(validation_fraction: float, test_fraction: float) -> dict[str, float]:
    """The shares of the training source that go to each split (zero shares omitted)."""
    fractions = {"train": 1.0 - validation_fraction - test_fraction}
    if validation_fraction > 0:
        fractions["validation"] = validation_fraction
    if test_fraction > 0:
        fractions["test"] = test_fraction
    return fractions


def allocate(count: int, fractions: Mapping[str, float]) -> dict[str, int] | None:
    """Splits ``count`` images by ``fractions`` (summing to 1) with largest-remainder
    rounding, then gives every split at least one image by taking from the
    largest. None when ``count`` is smaller than the number of splits."""
    if count < len(fractions):
        return None
    # Rounded so that 100 * 0.29 = 28.999999999999996 still counts as 29.
    exact = {split: round(count * share, 9) for split, share in fractions.items()}
    counts = {split: math.floor(value) for split, value in exact.items()}
    order = sorted(fractions, key=lambda split: (-(exact[split] - counts[split]), _position(split)))
    for split in order[: count - sum(counts.values())]:
        counts[split] += 1
    for split in sorted(fractions, key=_position):
        if counts[split] == 0:
            donor = max(counts, key=lambda name: (counts[name], name == "train"))
            counts[donor] -= 1
            counts[split] += 1
    return counts


def _position(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _seeded(seed: int, purpose: str, digest: str) -> str:
    return hashlib.sha256(f"{seed}\0{purpose}\0{digest}".encode("ascii")).hexdigest()


def minimum_per_class(fractions: Mapping[str, float]) -> int:
    return len(fractions)


def check_class_sizes(counts: Mapping[str, int], fractions: Mapping[str, float], what: str) -> None:
    """Raises SourceError naming every class too small to give each split one image."""
    needed = minimum_per_class(fractions)
    small = {name: count for name, count in sorted(counts.items()) if count < needed}
    if small:
        listed = ", ".join(f"{name!r} has {count}" for name, count in small.items())
        splits = ", ".join(sorted(fractions, key=_position))
        raise SourceError(
            f"classes too small to split: {listed} {what}; each class needs at least {needed} "
            f"(one for each of {splits}). Add images, or set the fraction of a split to 0, or "
            "give an explicit validation/test source")


def stratified_split(digests_by_class: Mapping[str, Iterable[str]], fractions: Mapping[str, float],
                     seed: int) -> dict[str, str]:
    """Maps every content digest to its split name."""
    check_class_sizes({name: len(set(digests)) for name, digests in digests_by_class.items()},
                      fractions, "images")
    assignment: dict[str, str] = {}
    for digests in digests_by_class.values():
        ranked = sorted(set(digests), key=lambda digest: _seeded(seed, "split", digest))
        counts = allocate(len(ranked), fractions)
        assert counts is not None  # checked above
        start = 0
        for split in sorted(counts, key=_position):
            for digest in ranked[start:start + counts[split]]:
                assignment[digest] = split
            start += counts[split]
    return assignment


def record_order(digests: Iterable[str], seed: int, split: str) -> list[str]:
    """A seeded shuffle of one split's images, so that every shard mixes classes."""
    return sorted(digests, key=lambda digest: _seeded(seed, f"order/{split}", digest))


def num_shards(num_examples: int, images_per_shard: int, minimum: int = MIN_SHARDS) -> int:
    """Enough shards to respect ``images_per_shard``, and at least ``minimum``
    (when there are that many images) so that readers can interleave files."""
    if num_examples <= 0:
        return 0
    return max(math.ceil(num_examples / images_per_shard), min(num_examples, minimum))


def shard_ranges(num_examples: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ranges of near-equal size covering ``num_examples``."""
    return [(index * num_examples // count, (index + 1) * num_examples // count) for index in range(count)]
