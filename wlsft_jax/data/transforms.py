"""Per-example grain transforms: image decoding and augmentation, normalisation, tokenization.

Each transform reads one key of an example dict and returns a new dict with that key (or an
output key) replaced, leaving the other keys untouched. Random transforms draw only from the
generator grain hands them, so a pipeline with a fixed seed yields the same data every time.
"""
import dataclasses
import io
import math
import string
from typing import Any, Sequence

import grain.python as grain
import numpy as np
from PIL import Image

from wlsft_jax.data import tokenizer as tokenizer_lib

# Per-channel RGB mean and std, in [0, 1] units.
MEAN_STD = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The embedded world (and big_vision's ViTs): map [0, 255] to [-1, 1].
    "world": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _field(element: Any, key: str, transform: object) -> Any:
    """Returns element[key], or raises a ValueError naming the transform and the keys present."""
    if not isinstance(element, dict):
        raise ValueError(f"{type(transform).__name__} expects a dict example, got "
                         f"{type(element).__name__}.")
    if key not in element:
        raise ValueError(f"{type(transform).__name__} needs the key {key!r}; the example has "
                         f"keys {sorted(element)}.")
    return element[key]


def _rgb_image(element: Any, key: str, transform: object) -> np.ndarray:
    """Returns element[key] checked to be a uint8[H, W, 3] image."""
    image = np.asarray(_field(element, key, transform))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{type(transform).__name__} expects {key!r} as uint8[H, W, 3], got "
                         f"{image.dtype}{list(image.shape)}; decode encoded images with "
                         f"DecodeImage first.")
    return image


# RandomResizedCrop's interpolation choices (PIL's filters, antialiased when downsampling).
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclasses.dataclass(frozen=True)
class DecodeImage(grain.MapTransform):
    """Decodes JPEG/PNG/... bytes (file and tfds sources) into uint8[H, W, 3] RGB."""
    key: str = "image"

    def map(self, element):
        encoded = _field(element, self.key, self)
        if not isinstance(encoded, (bytes, np.bytes_)):
            raise ValueError(f"DecodeImage expects {self.key!r} as encoded bytes (JPEG, PNG, ...), "
                             f"got {type(encoded).__name__}; drop DecodeImage for decoded arrays.")
        with Image.open(io.BytesIO(encoded)) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return {**element, self.key: rgb}


def _shorter_side_scaled(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to `size` and the aspect ratio kept; the
    longer side is truncated to an integer, as torchvision's Resize(size) does for CLIP."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the central size x size crop, rounded as torchvision's CenterCrop does."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop(grain.MapTransform):
    """CLIP's evaluation view: bicubic resize of the shorter side to `size`, then the central
    size x size crop (what CLIP, open_clip, WiSE-FT and FLYP evaluate on). Unlike a square
    resize it keeps the aspect ratio; the image stays uint8."""
    size: int
    key: str = "image"

    def map(self, element):
        image = _rgb_image(element, self.key, self)
        height, width = _shorter_side_scaled(*image.shape[:2], self.size)
        resized = np.asarray(Image.fromarray(image).resize((width, height),
                                                           Image.Resampling.BICUBIC))
        top, left = _center_crop_offsets(height, width, self.size)
        crop = resized[top:top + self.size, left:left + self.size]
        return {**element, self.key: np.ascontiguousarray(crop, dtype=np.uint8)}


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.RandomMapTransform):
    """Crops a random box (area fraction in `scale`, aspect ratio in `ratio`), resizes it to
    size x size with `resample` (a RESAMPLING name). FLYP fine-tunes with scale=(0.9, 1.0),
    bicubic as open_clip."""
    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    key: str = "image"
    attempts: int = 10
    resample: str = "bilinear"

    def __post_init__(self):
        if self.resample not in RESAMPLING:
            raise ValueError(f"Unknown resample={self.resample!r}; valid: {list(RESAMPLING)}.")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale={self.scale} must satisfy 0 < low <= high <= 1.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={self.ratio} must satisfy 0 < low <= high.")

    def crop_box(self, height: int, width: int, rng: np.random.Generator):
        """Returns (left, top, right, bottom) of the crop, drawn from `rng`.

        Draws area fraction and log aspect ratio uniformly until the box fits in the image; if
        `attempts` draws all fail, takes the largest central box with an allowed aspect ratio.
        """
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.attempts):
            area = height * width * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_width = round(math.sqrt(area * aspect))
            crop_height = round(math.sqrt(area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(rng.integers(0, height - crop_height + 1))
                left = int(rng.integers(0, width - crop_width + 1))
                return left, top, left + crop_width, top + crop_height
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        crop_width = min(width, round(height * aspect))
        crop_height = min(height, round(width / aspect))
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height

    def random_map(self, element, rng: np.random.Generator):
        image = _rgb_image(element, self.key, self)
        box = self.crop_box(image.shape[0], image.shape[1], rng)
        resized = Image.fromarray(image).resize((self.size, self.size),
                                                RESAMPLING[self.resample], box=box)
        return {**element, self.key: np.asarray(resized, dtype=np.uint8)}


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip(grain.RandomMapTransform):
    """Mirrors the image left-right with probability 1/2."""
    key: str = "image"

    def random_map(self, element, rng: np.random.Generator):
        image = _rgb_image(element, self.key, self)
        if rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        return {**element, self.key: image}


@dataclasses.dataclass(frozen=True)
class Normalize(grain.MapTransform):
    """uint8 image -> float32 (image / 255 - mean) / std, with per-channel mean and std."""
    mean: Sequence[float]
    std: Sequence[float]
    key: str = "image"

    @classmethod
    def named(cls, name: str, key: str = "image") -> "Normalize":
        """The normalisation a model family was trained with: one of MEAN_STD's names."""
        if name not in MEAN_STD:
            raise ValueError(f"Unknown normalisation {name!r}; valid names: {sorted(MEAN_STD)}.")
        mean, std = MEAN_STD[name]
        return cls(mean=mean, std=std, key=key)

    def map(self, element):
        image = _rgb_image(element, self.key, self).astype(np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return {**element, self.key: (image - mean) / std}


def _text(value: Any) -> str:
    """A caption as str (tfds gives bytes)."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.MapTransform):
    """Caption -> int32[context_length] tokens under `output_key`."""
    tokenizer: tokenizer_lib.Tokenizer
    key: str = "caption"
    output_key: str = "tokens"

    def map(self, element):
        caption = _text(_field(element, self.key, self))
        return {**element, self.output_key: self.tokenizer.encode([caption])[0]}


_TEMPLATE_RULE = ("a template holds exactly one '{}' where the class name goes, "
                  "e.g. 'a photo of a {}.'")


def _check_template(template: str) -> None:
    """Raises ValueError unless `template` has exactly one "{}" and no other placeholder."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as error:
        raise ValueError(
            f"Template {template!r} is malformed ({error}); {_TEMPLATE_RULE}.") from None
    if fields != [""]:
        raise ValueError(f"Template {template!r} has placeholders {fields}; {_TEMPLATE_RULE}.")


@dataclasses.dataclass(frozen=True)
class ClassPrompts(grain.RandomMapTransform):
    """Label -> tokens of a class prompt: a template drawn per example and step, filled with the
    class name (FLYP's text side)."""
    tokenizer: tokenizer_lib.Tokenizer
    class_names: Sequence[str]
    templates: Sequence[str]
    label_key: str = "label"
    output_key: str = "tokens"

    def __post_init__(self):
        if not self.templates:
            raise ValueError(f"ClassPrompts needs at least one template; {_TEMPLATE_RULE}.")
        for template in self.templates:
            _check_template(template)

    def random_map(self, element, rng: np.random.Generator):
        label = int(_field(element, self.label_key, self))
        if not 0 <= label < len(self.class_names):
            raise ValueError(f"Label {label} is outside the {len(self.class_names)} classes "
                             f"(valid labels: 0..{len(self.class_names) - 1}).")
        template = self.templates[int(rng.integers(len(self.templates)))]
        prompt = template.format(self.class_names[label])
        return {**element, self.output_key: self.tokenizer.encode([prompt])[0]}


@dataclasses.dataclass(frozen=True)
class SelectKeys(grain.MapTransform):
    """Keeps only `keys` (e.g. drops caption strings before batching into arrays)."""
    keys: Sequence[str]

    def map(self, element):
        return {key: _field(element, key, self) for key in self.keys}
