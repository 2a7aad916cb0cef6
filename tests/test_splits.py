import hashlib
import itertools
import random

import pytest

from kic.data import splits
from kic.data.sources import SourceError


def _digests(prefix: str, count: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}{index}".encode()).hexdigest() for index in range(count)]


FRACTIONS = [
    {"train": 0.7, "validation": 0.2, "test": 0.1},
    {"train": 0.8, "validation": 0.2},
    {"train": 0.5, "validation": 0.25, "test": 0.25},
    {"train": 0.71, "validation": 0.29},
]


@pytest.mark.parametrize("fractions", FRACTIONS, ids=lambda fractions: "/".join(map(str, fractions.values())))
def test_allocation_sums_and_stays_within_one_image(fractions):
    for count in range(3, 60):
        counts = splits.allocate(count, fractions)
        assert sum(counts.values()) == count, count
        assert all(counts[split] >= 1 for split in fractions), count
        if all(count * share >= 1 for share in fractions.values()):
            # Largest remainder: every split within one image of its exact share.
            for split, share in fractions.items():
                assert abs(counts[split] - count * share) < 1 + 1e-9, (count, split, counts)


def test_allocation_exact_shares_are_exact():
    assert splits.allocate(10, {"train": 0.7, "validation": 0.2, "test": 0.1}) == \
        {"train": 7, "validation": 2, "test": 1}
    assert splits.allocate(100, {"train": 0.71, "validation": 0.29}) == {"train": 71, "validation": 29}


def test_small_class_gets_one_image_per_split_or_none():
    assert splits.allocate(3, {"train": 0.8, "validation": 0.1, "test": 0.1}) == \
        {"train": 1, "validation": 1, "test": 1}
    assert splits.allocate(2, {"train": 0.8, "validation": 0.1, "test": 0.1}) is None


def test_stratified_split_is_deterministic_disjoint_and_order_independent():
    by_class = {"a": _digests("a", 50), "b": _digests("b", 13), "c": _digests("c", 7)}
    fractions = {"train": 0.7, "validation": 0.2, "test": 0.1}
    first = splits.stratified_split(by_class, fractions, seed=7)
    shuffled = {name: random.Random(1).sample(digests, len(digests)) for name, digests in
                reversed(list(by_class.items()))}
    assert splits.stratified_split(shuffled, fractions, seed=7) == first
    assert set(first) == {digest for digests in by_class.values() for digest in digests}
    for name, digests in by_class.items():
        per_split = {split: sum(first[digest] == split for digest in digests) for split in fractions}
        assert per_split == splits.allocate(len(digests), fractions), name
    other_seed = splits.stratified_split(by_class, fractions, seed=8)
    assert other_seed != first


def test_growing_a_class_moves_few_old_images():
    fractions = {"train": 0.8, "validation": 0.2}
    old = splits.stratified_split({"a": _digests("a", 100)}, fractions, seed=1)
    new = splits.stratified_split({"a": _digests("a", 110)}, fractions, seed=1)
    moved = sum(old[digest] != new[digest] for digest in old)
    assert moved <= 5


def test_too_small_class_error_names_class_and_count():
    with pytest.raises(SourceError, match=r"'tiny' has 2") as error:
        splits.stratified_split({"big": _digests("x", 30), "tiny": _digests("y", 2)},
                                {"train": 0.7, "validation": 0.2, "test": 0.1}, seed=0)
    assert "'big'" not in str(error.value)


def test_record_order_is_seeded_shuffle():
    digests = sorted(_digests("r", 40))
    order = splits.record_order(digests, seed=3, split="train")
    assert sorted(order) == digests and order != digests
    assert splits.record_order(list(reversed(digests)), seed=3, split="train") == order
    assert splits.record_order(digests, seed=4, split="train") != order


@pytest.mark.parametrize(("count", "per_shard", "expected"), [
    (0, 10, 0), (1, 10, 1), (3, 10, 3), (4, 10, 4), (40, 10, 4), (41, 10, 5),
    (1000, 1024, 4), (5000, 1024, 5),
])
def test_num_shards(count, per_shard, expected):
    assert splits.num_shards(count, per_shard) == expected


def test_shard_ranges_cover_everything_evenly():
    ranges = splits.shard_ranges(10, 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    assert all(left[1] == right[0] for left, right in itertools.pairwise(ranges))
    assert {stop - start for start, stop in ranges} <= {2, 3}
