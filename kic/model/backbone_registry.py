"""The backbones kic can train on, as data: names, families, native input
sizes, pixel scalings, the Keras Applications constructor each maps to, and
the reference algorithm's ``model_id`` strings.

Names are our own (``mobilenet_v2_100_224``); the reference algorithm's
``model_id`` strings (``tensorflow-ic-imagenet-mobilenet-v2-100-224-classification-4``)
are parsed into the equivalent entry where Keras has one.

This module imports no Keras or TensorFlow, so the front door
(``kic.parameters``), ``kic backbones`` and ``validate`` resolve and check a
backbone in milliseconds; ``kic.model.backbones`` builds the networks.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kic.errors import ParameterError, Problem

# How each family expects its pixels, reproducing keras.applications.<family>.preprocess_input
# (kic.model.pixel_scaling implements them as a layer).
PIXEL_SCALINGS: dict[str, str] = {
    "tf": "x / 127.5 - 1, to [-1, 1]",
    "caffe": "RGB to BGR, minus the ImageNet mean (BGR 103.939, 116.779, 123.68), no scaling",
    "torch": "x / 255, minus ImageNet mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225)",
    "identity": "pass-through: the network scales its own pixels (built-in Rescaling/Normalization)",
}

DEFAULT_BACKBONE = "mobilenet_v2_100_224"
# MobileNetV3-Small: 0.94 M backbone parameters and ~60 MFLOPs at 224 px (MobileNetV2 1.0:
# 2.26 M, ~300 MFLOPs) with ImageNet weights in Keras (top-1 ~68%, far above the MobileNetV2
# 0.35/96 class). On 2 shared CPU cores it trains about 2x as fast as the default (measured
# 17 vs 8 img/s full fine-tuning, 47 vs 24 img/s with the backbone frozen, batch 32).
CPU_DEMO_BACKBONE = "mobilenet_v3_small_100_224"

REFERENCE_PREFIX = "tensorflow-ic-"


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    family: str
    input_size: int
    pixel_scaling: str
    constructor: str  # attribute of keras.applications
    options: tuple[tuple[str, Any], ...] = ()  # extra constructor keyword arguments
    preprocess_module: str = ""  # keras.applications.<module>.preprocess_input matches pixel_scaling
    min_size: int = 32
    reference_model_ids: tuple[str, ...] = ()


class UnknownBackboneError(ParameterError):
    """A backbone name or reference model_id kic cannot map; names the closest choices."""

    def __init__(self, value: str, message: str, suggestions: list[str]) -> None:
        self.suggestions = list(suggestions)
        hint = f"; closest supported: {', '.join(self.suggestions)}" if self.suggestions else ""
        super().__init__([Problem("backbone", value, f"{message}{hint} (`kic backbones` lists all)")])


# --------------------------------------------------------------------------- registry


def _reference_id(core: str, version: int) -> str:
    return f"{REFERENCE_PREFIX}{core}-classification-{version}"


def _width_tag(alpha: float) -> str:
    return f"{round(alpha * 100):03d}"


def _mobilenet_entries() -> list[Backbone]:
    entries = []
    for alpha in (0.25, 0.5, 0.75, 1.0):
        for size in (128, 160, 192, 224):
            width = _width_tag(alpha)
            entries.append(Backbone(
                name=f"mobilenet_v1_{width}_{size}", family="MobileNetV1", input_size=size,
                pixel_scaling="tf",
                constructor="MobileNet", options=(("alpha", alpha),), preprocess_module="mobilenet",
                reference_model_ids=(_reference_id(f"imagenet-mobilenet-v1-{width}-{size}", 4),)))
    v2_variants = [(alpha, size) for alpha in (0.35, 0.5, 0.75, 1.0) for size in (96, 128, 160, 192, 224)]
    v2_variants += [(1.3, 224), (1.4, 224)]
    for alpha, size in v2_variants:
        width = _width_tag(alpha)
        ids = [_reference_id(f"imagenet-mobilenet-v2-{width}-{size}", 4)]
        if (alpha, size) == (1.0, 224):
            ids.append(_reference_id("tf2-preview-mobilenet-v2", 4))
        entries.append(Backbone(
            name=f"mobilenet_v2_{width}_{size}", family="MobileNetV2", input_size=size,
            pixel_scaling="tf",
            constructor="MobileNetV2", options=(("alpha", alpha),), preprocess_module="mobilenet_v2",
            reference_model_ids=tuple(ids)))
    # Keras has ImageNet weights for these V3 variants only (minimalistic: width 1.0).
    for size_class in ("small", "large"):
        for alpha, minimalistic in ((0.75, False), (1.0, False), (1.0, True)):
            variant = f"{size_class}_minimalistic" if minimalistic else size_class
            entries.append(Backbone(
                name=f"mobilenet_v3_{variant}_{_width_tag(alpha)}_224",
                family=f"MobileNetV3{size_class.capitalize()}", input_size=224, pixel_scaling="identity",
                constructor=f"MobileNetV3{size_class.capitalize()}",
                options=(("alpha", alpha), ("minimalistic", minimalistic), ("include_preprocessing", True)),
                preprocess_module="mobilenet_v3"))
    return entries


def _efficientnet_entries() -> list[Backbone]:
    entries = []
    for index, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        entries.append(Backbone(
            name=f"efficientnet_b{index}", family="EfficientNet", input_size=size, pixel_scaling="identity",
            constructor=f"EfficientNetB{index}", preprocess_module="efficientnet",
            reference_model_ids=(_reference_id(f"efficientnet-b{index}", 1),)))
    for variant, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384), ("m", 480),
                          ("l", 480)):
        entries.append(Backbone(
            name=f"efficientnet_v2_{variant}", family="EfficientNetV2", input_size=size,
            pixel_scaling="identity",
            constructor=f"EfficientNetV2{variant.upper()}", options=(("include_preprocessing", True),),
            preprocess_module="efficientnet_v2"))
    return entries


def _classic_entries() -> list[Backbone]:
    entries = []
    for depth in (50, 101, 152):
        ids = [_reference_id(f"imagenet-resnet-v1-{depth}", 4)]
        if depth == 50:
            ids.append(_reference_id("resnet-50", 1))
        entries.append(Backbone(
            name=f"resnet{depth}", family="ResNetV1", input_size=224, pixel_scaling="caffe",
            constructor=f"ResNet{depth}", preprocess_module="resnet", reference_model_ids=tuple(ids)))
        entries.append(Backbone(
            name=f"resnet{depth}_v2", family="ResNetV2", input_size=224, pixel_scaling="tf",
            constructor=f"ResNet{depth}V2", preprocess_module="resnet_v2",
            reference_model_ids=(_reference_id(f"imagenet-resnet-v2-{depth}", 4),)))
    entries += [
        Backbone(name="inception_v3", family="InceptionV3", input_size=299, pixel_scaling="tf",
                 constructor="InceptionV3", preprocess_module="inception_v3", min_size=75,
                 reference_model_ids=(_reference_id("imagenet-inception-v3", 4),
                                      _reference_id("tf2-preview-inception-v3", 4))),
        Backbone(name="inception_resnet_v2", family="InceptionResNetV2", input_size=299, pixel_scaling="tf",
                 constructor="InceptionResNetV2", preprocess_module="inception_resnet_v2", min_size=75,
                 reference_model_ids=(_reference_id("imagenet-inception-resnet-v2", 4),)),
        Backbone(name="xception", family="Xception", input_size=299, pixel_scaling="tf", constructor="Xception",
                 preprocess_module="xception", min_size=71),
    ]
    for depth in (121, 169, 201):
        entries.append(Backbone(
            name=f"densenet{depth}", family="DenseNet", input_size=224, pixel_scaling="torch",
            constructor=f"DenseNet{depth}", preprocess_module="densenet"))
    for size_name in ("tiny", "small", "base", "large"):
        entries.append(Backbone(
            name=f"convnext_{size_name}", family="ConvNeXt", input_size=224, pixel_scaling="identity",
            constructor=f"ConvNeXt{size_name.capitalize()}", options=(("include_preprocessing", True),),
            preprocess_module="convnext"))
    entries += [
        Backbone(name="nasnet_mobile", family="NASNet", input_size=224, pixel_scaling="tf",
                 constructor="NASNetMobile", preprocess_module="nasnet",
                 reference_model_ids=(_reference_id("imagenet-nasnet-mobile", 4),)),
        Backbone(name="nasnet_large", family="NASNet", input_size=331, pixel_scaling="tf",
                 constructor="NASNetLarge", preprocess_module="nasnet",
                 reference_model_ids=(_reference_id("imagenet-nasnet-large", 4),)),
    ]
    return entries


def _build_registry() -> dict[str, Backbone]:
    registry: dict[str, Backbone] = {}
    for backbone in _mobilenet_entries() + _efficientnet_entries() + _classic_entries():
        assert backbone.name not in registry, backbone.name
        assert backbone.pixel_scaling in PIXEL_SCALINGS, backbone
        registry[backbone.name] = backbone
    return registry


REGISTRY: Mapping[str, Backbone] = MappingProxyType(_build_registry())


def _compact(text: str) -> str:
    return re.sub(r"[\s_\-.]", "", text.strip().lower())


def _build_aliases() -> dict[str, str]:
    """Spelling-insensitive keys: our names, and Keras constructor names (their default variant)."""
    aliases: dict[str, str] = {}
    for name in REGISTRY:
        aliases[_compact(name)] = name
    constructor_defaults = {
        "MobileNet": "mobilenet_v1_100_224", "MobileNetV2": "mobilenet_v2_100_224",
        "MobileNetV3Small": "mobilenet_v3_small_100_224", "MobileNetV3Large": "mobilenet_v3_large_100_224",
    }
    for backbone in REGISTRY.values():
        aliases.setdefault(_compact(backbone.constructor),
                           constructor_defaults.get(backbone.constructor, backbone.name))
    extra = {"mobilenet_v1": "mobilenet_v1_100_224", "mobilenet_v2": "mobilenet_v2_100_224",
             "mobilenet_v3_small": "mobilenet_v3_small_100_224",
             "mobilenet_v3_large": "mobilenet_v3_large_100_224",
             "resnet50_v1": "resnet50", "resnet101_v1": "resnet101", "resnet152_v1": "resnet152"}
    for alias, name in extra.items():
        aliases.setdefault(_compact(alias), name)
    return aliases


_ALIASES = _build_aliases()


# --------------------------------------------------------------------------- reference model_ids


class _Unmappable(Exception):
    def __init__(self, reason: str, suggestions: list[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.suggestions = suggestions


def _mobilenet_rule(version: str):
    def rule(match: re.Match) -> str:
        width, size = match.group("width") or "100", match.group("size") or "224"
        return f"mobilenet_{version}_{width}_{size}"
    return rule


def _mobilenet_v3_rule(match: re.Match) -> str:
    variant = match.group("variant") + ("_minimalistic" if match.group("minimalistic") else "")
    return f"mobilenet_v3_{variant}_{match.group('width') or '100'}_{match.group('size') or '224'}"


def _efficientnet_lite_rule(match: re.Match) -> str:
    index = int(match.group("index"))
    raise _Unmappable(
        f"EfficientNet-Lite{index} (EfficientNet without squeeze-and-excitation, with ReLU6, for "
        "quantized mobile inference) is not in Keras Applications",
        [f"efficientnet_b{min(index, 4)}", "mobilenet_v3_large_100_224"])


def _efficientnet_v2_rule(match: re.Match) -> str:
    variant = match.group("variant")
    if variant == "xl":
        raise _Unmappable("EfficientNetV2-XL is not in Keras Applications", ["efficientnet_v2_l"])
    return f"efficientnet_v2_{variant}"


def _inception_rule(match: re.Match) -> str:
    version = match.group("version")
    if version == "3":
        return "inception_v3"
    network = "GoogLeNet" if version == "1" else "BN-Inception"
    raise _Unmappable(
        f"Inception V{version} ({network}) is not in Keras Applications",
        ["inception_v3", "mobilenet_v2_140_224", "resnet50_v2"])


def _bit_rule(match: re.Match) -> str:
    depth, width = match.group("depth"), match.group("width")
    pretraining = "ILSVRC-2012" if match.group("kind") == "s" else "ImageNet-21k"
    wider = f"; its {width}x width has no Keras counterpart" if width != "1" else ""
    raise _Unmappable(
        f"BiT-{match.group('kind').upper()} R{depth}x{width} (a ResNet V2 with group normalization and "
        f"weight standardization, pretrained on {pretraining}) is not in Keras Applications{wider}",
        [f"resnet{depth}_v2", f"resnet{depth}"])


def _pnasnet_rule(match: re.Match) -> str:
    raise _Unmappable("PNASNet-5 Large is not in Keras Applications", ["nasnet_large", "inception_resnet_v2"])


# Applied to the id without "tensorflow-ic-", "-classification-N" and a leading "imagenet-" / "tf2-preview-".
_REFERENCE_RULES = [
    (r"mobilenet-v1(?:-(?P<width>\d{3})-(?P<size>\d+))?", _mobilenet_rule("v1")),
    (r"mobilenet-v2(?:-(?P<width>\d{3})-(?P<size>\d+))?", _mobilenet_rule("v2")),
    ((r"mobilenet-v3-(?P<variant>small|large)(?P<minimalistic>-minimalistic)?"
      r"(?:-(?P<width>\d{3})-(?P<size>\d+))?"), _mobilenet_v3_rule),
    (r"efficientnet-b(?P<index>\d+)", lambda m: f"efficientnet_b{m.group('index')}"),
    (r"efficientnet-lite(?P<index>\d+)", _efficientnet_lite_rule),
    (r"efficientnet-v2-(?:imagenet1k-|imagenet21k-|imagenet21k-ft1k-)?(?P<variant>b[0-3]|s|m|l|xl)",
     _efficientnet_v2_rule),
    (r"resnet-v1-(?P<depth>\d+)", lambda m: f"resnet{m.group('depth')}"),
    (r"resnet-v2-(?P<depth>\d+)", lambda m: f"resnet{m.group('depth')}_v2"),
    (r"resnet-(?P<depth>\d+)", lambda m: f"resnet{m.group('depth')}"),
    (r"inception-resnet-v2", lambda m: "inception_resnet_v2"),
    (r"inception-v(?P<version>[123])", _inception_rule),
    (r"bit-(?P<kind>[sm])-r(?P<depth>\d+)x(?P<width>\d+)(?:-ilsvrc2012)?", _bit_rule),
    (r"nasnet-(?P<size>mobile|large)", lambda m: f"nasnet_{m.group('size')}"),
    (r"pnasnet-large", _pnasnet_rule),
    (r"xception", lambda m: "xception"),
    (r"densenet-?(?P<depth>\d+)", lambda m: f"densenet{m.group('depth')}"),
]
_REFERENCE_SUFFIX = re.compile(r"-(?:classification|feature-?vector)-\d+$")
_REFERENCE_SOURCE = re.compile(r"^(?:imagenet-|tf2-preview-)")


def _looks_like_reference_id(text: str) -> bool:
    return text.startswith(REFERENCE_PREFIX) or bool(_REFERENCE_SUFFIX.search(text))


def _resolve_reference_id(model_id: str) -> Backbone:
    text = model_id.strip().lower()
    core = _REFERENCE_SOURCE.sub("", _REFERENCE_SUFFIX.sub("", text.removeprefix(REFERENCE_PREFIX)))
    for pattern, rule in _REFERENCE_RULES:
        match = re.fullmatch(pattern, core)
        if not match:
            continue
        try:
            name = rule(match)
        except _Unmappable as unmappable:
            suggestions = [name for name in unmappable.suggestions if name in REGISTRY]
            raise UnknownBackboneError(model_id, f"reference model_id {model_id!r}: {unmappable.reason}",
                                       suggestions or _closest(core, [])) from None
        if name in REGISTRY:
            return REGISTRY[name]
        family_prefix = re.sub(r"_?\d+(_\d+)?$", "", name)
        same_family = [n for n in REGISTRY if n.startswith(family_prefix)]
        raise UnknownBackboneError(
            model_id,
            f"reference model_id {model_id!r} means {name!r}, which Keras Applications does not provide "
            "(no such width/size/depth)", _closest(name, same_family or list(REGISTRY)))
    raise UnknownBackboneError(model_id, f"reference model_id {model_id!r} is not a known architecture",
                               _closest(core.replace("-", "_"), list(REGISTRY)))


def _closest(key: str, names: list[str]) -> list[str]:
    found = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    return found or [DEFAULT_BACKBONE, CPU_DEMO_BACKBONE]


def resolve(name_or_model_id: str) -> Backbone:
    """Our name (any case, '-' or '_'), a Keras constructor name, or a reference ``model_id``."""
    text = str(name_or_model_id).strip()
    if text in REGISTRY:
        return REGISTRY[text]
    alias = _ALIASES.get(_compact(text))
    if alias is not None:
        return REGISTRY[alias]
    if _looks_like_reference_id(text.lower()):
        return _resolve_reference_id(text)
    key = re.sub(r"[\s\-]+", "_", text.lower())
    raise UnknownBackboneError(name_or_model_id, f"unknown backbone {text!r}", _closest(key, list(REGISTRY)))


def image_size_problems(backbone: Backbone, image_size: int) -> list[Problem]:
    """``image_size``: 0 for the backbone's native size, else at least its minimum."""
    if image_size == 0 or image_size >= backbone.min_size:
        return []
    return [Problem("image_size", image_size, f"0 (the native {backbone.input_size}) or at least {backbone.min_size}, "
                                              f"the smallest input backbone {backbone.name} takes")]


# --------------------------------------------------------------------------- listing


def format_registry() -> str:
    """A plain-text table of every backbone, for ``kic backbones``."""
    header = ("name", "family", "input", "pixel scaling", "reference model_ids")
    rows = [header]
    for backbone in REGISTRY.values():
        rows.append((backbone.name, backbone.family, str(backbone.input_size), backbone.pixel_scaling,
                     ", ".join(backbone.reference_model_ids) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * len(header[-1]))
    legend = [f"  {mode}: {meaning}" for mode, meaning in PIXEL_SCALINGS.items()]
    lines += ["", f"default: {DEFAULT_BACKBONE}; CPU demo: {CPU_DEMO_BACKBONE}",
              "pixel scaling (inputs are RGB in [0, 255]; scaling is a layer inside the model):", *legend]
    return "\n".join(lines)
