"""The manifest of a prepared dataset (``dataset_info.json``).

Prepare writes it last, after every shard is complete; readers refuse a
directory without it, so a half-written dataset is never mistaken for a
whole one.
"""

from __future__ import annotations

import dataclasses
import json

from kic import artifacts, storage
from kic.errors import DataError

FORMAT_VERSION = 1


class IncompleteDatasetError(DataError):
    """The directory is not a finished prepared dataset."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    num_examples: int
    shards: tuple[str, ...]  # file names relative to the dataset directory


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]
    fingerprint: str  # sha256 over the sorted (split, label, content sha256) of every kept image
    source: str
    image_short_side: int
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_map(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.class_names)}

    def to_json(self) -> str:
        payload = dataclasses.asdict(self)
        payload["class_names"] = list(self.class_names)
        payload["splits"] = {
            name: {"num_examples": split.num_examples, "shards": list(split.shards)}
            for name, split in self.splits.items()
        }
        return json.dumps(payload, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DatasetInfo:
        payload = json.loads(text)
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise IncompleteDatasetError(
                f"dataset format version {version!r} is not supported (expected {FORMAT_VERSION})")
        return cls(
            class_names=tuple(payload["class_names"]),
            splits={
                name: SplitInfo(num_examples=int(split["num_examples"]), shards=tuple(split["shards"]))
                for name, split in payload["splits"].items()
            },
            fingerprint=payload["fingerprint"],
            source=payload["source"],
            image_short_side=int(payload["image_short_side"]),
            format_version=version,
        )

    def shard_paths(self, dataset_dir: str, split: str) -> list[str]:
        if split not in self.splits:
            return []
        return [storage.join(dataset_dir, shard) for shard in self.splits[split].shards]


def load(dataset_dir: str) -> DatasetInfo:
    path = storage.join(dataset_dir, artifacts.DATASET_INFO)
    if not storage.exists(path):
        raise IncompleteDatasetError(
            f"{dataset_dir} is not a finished prepared dataset: {artifacts.DATASET_INFO} is missing "
            "(prepare did not complete, or this is not a prepare output)")
    return DatasetInfo.from_json(storage.read_text(path))


def images_per_class(dataset_dir: str) -> dict[str, dict[str, int]]:
    """How many images of each class each split of a prepared dataset holds
    (class -> split -> count), from prepare's data report; {} without one."""
    path = storage.join(dataset_dir, artifacts.DATA_REPORT_JSON)
    if not storage.exists(path):
        return {}
    counts = json.loads(storage.read_text(path)).get("counts", {}).get("per_class", {})
    return {name: {split: int(count) for split, count in splits.items()} for name, splits in counts.items()}


def save(dataset_dir: str, info: DatasetInfo) -> None:
    storage.write_text(storage.join(dataset_dir, artifacts.DATASET_INFO), info.to_json())


def evaluation_split(info: DatasetInfo) -> str:
    """The split a model is judged on: test, or validation when there is no test split
    (evaluate's metrics and gate, and export's serving parity check, use the same one)."""
    return "test" if info.splits.get("test") and info.splits["test"].num_examples else "validation"
