"""Per-example grain transforms: image decoding and augmentation, normalisation, tokenization.

Each transform reads one key of an example dict and returns a new dict with that key (or an
output key) replaced, leaving the other keys untouched. Random transforms draw only from the
generator grain hands them, so a pipeline with a fixed seed yields the same data every time.

The two resizing views (RandomResizedCrop, ResizeCenterCrop) also take encoded bytes and then
decode them themselves ("fused decode", `fuse_decode` wires it into a list of operations): the
crop box is drawn from the header's size with the same generator draws as on a decoded array,
only the box's region is resampled, and a JPEG whose box is at least twice the output size is
decoded at 1/2, 1/4 or 1/8 scale by libjpeg (PIL's `draft`), the largest that keeps the box at
least the output size. Where no such reduction applies (an ImageNet photo of ~500 x 375 cropped
to 224) the output is bitwise the decode-then-crop one; with it, it differs by resampling noise
(tests/test_transforms.py bounds both). benchmarks/input_pipeline.py measures what it saves.
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
# The JPEG decoder's DCT scalings that PIL's `draft` reaches: 1/1, 1/2, 1/4, 1/8.
JPEG_REDUCTIONS = (8, 4, 2, 1)


def _is_encoded(value: Any) -> bool:
    return isinstance(value, (bytes, np.bytes_))


def _rgb(image: Image.Image) -> Image.Image:
    """`image` decoded as RGB (grayscale, CMYK, palette, ... converted as DecodeImage does);
    an RGB image is not copied (`convert` would copy it: 0.3 ms at 500 x 375)."""
    if image.mode == "RGB":
        image.load()
        return image
    return image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class DecodeImage(grain.MapTransform):
    """Decodes JPEG/PNG/... bytes (file and tfds sources) into uint8[H, W, 3] RGB."""
    key: str = "image"

    def map(self, element):
        encoded = _field(element, self.key, self)
        if not _is_encoded(encoded):
            raise ValueError(f"DecodeImage expects {self.key!r} as encoded bytes (JPEG, PNG, ...), "
                             f"got {type(encoded).__name__}; drop DecodeImage for decoded arrays.")
        with Image.open(io.BytesIO(encoded)) as image:
            rgb = np.asarray(_rgb(image), dtype=np.uint8)
        return {**element, self.key: rgb}


def jpeg_reduction(box_width: float, box_height: float, size: int) -> int:
    """The largest JPEG DCT reduction (8, 4, 2 or 1) that keeps a box_width x box_height region
    at least `size` pixels on each side: decoding at 1/s costs less, and the box is then only
    downscaled from at least `size`, so no detail the output holds is lost."""
    return next(s for s in JPEG_REDUCTIONS if s == 1 or min(box_width, box_height) >= s * size)


def _decode_resized(image: Image.Image, box: tuple[float, float, float, float], size: int,
                    resample: int) -> np.ndarray:
    """The `box` (left, top, right, bottom, full-size pixels) of the opened, not yet decoded
    `image`, resampled to uint8[size, size, 3] RGB. A JPEG is decoded at the `jpeg_reduction`
    of the box (any other format at full size) and the box mapped into the reduced pixels."""
    left, top, right, bottom = box
    reduction = jpeg_reduction(right - left, bottom - top, size)
    if reduction > 1:
        width = image.width
        drafted = image.draft("RGB", (width // reduction, image.height // reduction))
        if drafted is not None:  # JPEG: the decoder reduces by width / drafted box width.
            scale = width / drafted[1][2]
            box = (left / scale, top / scale, right / scale, bottom / scale)
    resized = _rgb(image).resize((size, size), resample, box=box)
    return np.asarray(resized, dtype=np.uint8)


def _crop_resized(element, key: str, transform: object, box_of, size: int,
                  resample: int) -> np.ndarray:
    """element[key] (encoded bytes: fused decode; or a uint8[H, W, 3] array) cut to the box
    `box_of(height, width)` gives and resampled to uint8[size, size, 3]."""
    value = _field(element, key, transform)
    if _is_encoded(value):
        with Image.open(io.BytesIO(value)) as image:  # Reads the header only.
            return _decode_resized(image, box_of(image.height, image.width), size, resample)
    image = _rgb_image(element, key, transform)
    resized = Image.fromarray(image).resize((size, size), resample, box=box_of(*image.shape[:2]))
    return np.asarray(resized, dtype=np.uint8)


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
    resize it keeps the aspect ratio; the image stays uint8.

    `image` is a uint8[H, W, 3] array or encoded bytes (fused decode, module docstring). Only
    the crop is resampled: PIL's resize of the crop's box in source pixels places its filter
    taps where resizing the whole image would, so the result is that of resize-then-crop
    (within 1 of 255 where fixed-point coefficients round differently) at a fraction of the
    cost (1.5 vs 2.0 ms at 500 x 375 -> 224)."""
    size: int
    key: str = "image"

    def box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in source pixels of the central crop of the image with
        its shorter side resized to `size`."""
        resized_height, resized_width = _shorter_side_scaled(height, width, self.size)
        top, left = _center_crop_offsets(resized_height, resized_width, self.size)
        scale_x, scale_y = width / resized_width, height / resized_height
        return (left * scale_x, top * scale_y, (left + self.size) * scale_x,
                (top + self.size) * scale_y)

    def map(self, element):
        return {**element, self.key: _crop_resized(element, self.key, self, self.box, self.size,
                                                   Image.Resampling.BICUBIC)}


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.RandomMapTransform):
    """Crops a random box (area fraction in `scale`, aspect ratio in `ratio`), resizes it to
    size x size with `resample` (a RESAMPLING name). FLYP fine-tunes with scale=(0.9, 1.0),
    bicubic as open_clip. `image` is a uint8[H, W, 3] array or encoded bytes (fused decode,
    module docstring: the same box from the same draws, resampled from a reduced JPEG decode
    where the box is at least twice `size`)."""
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
        box_of = lambda height, width: self.crop_box(height, width, rng)
        return {**element, self.key: _crop_resized(element, self.key, self, box_of, self.size,
                                                   RESAMPLING[self.resample])}


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip(grain.RandomMapTransform):
    """Mirrors the image left-right with probability 1/2."""
    key: str = "image"

    def random_map(self, element, rng: np.random.Generator):
        image = _rgb_image(element, self.key, self)
        if rng.random() < 0.5:  # PIL's mirror: 0.07 ms at 224 px, numpy's copy 0.24 ms.
            image = np.asarray(Image.fromarray(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
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
        image = _rgb_image(element, self.key, self)
        height, width, channels = image.shape
        # The same float32 operations as (image / 255 - mean) / std, on rows of width * 3
        # values: broadcasting over a last axis of 3 runs numpy's inner loop 3 values at a
        # time (0.5 ms at 224 px, 0.07 ms this way).
        rows = image.reshape(height, width * channels).astype(np.float32)
        rows /= 255.0
        rows -= np.tile(np.asarray(self.mean, dtype=np.float32), width)
        rows /= np.tile(np.asarray(self.std, dtype=np.float32), width)
        return {**element, self.key: rows.reshape(height, width, channels)}


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


def fuse_decode(operations: Sequence[grain.Transformation]) -> tuple[grain.Transformation, ...]:
    """`operations` less each DecodeImage directly followed by a RandomResizedCrop or
    ResizeCenterCrop of the same key, which then decodes the bytes itself (module docstring).
    A DecodeImage followed by anything else (ObjectNet's CropBorder) stays."""
    operations = tuple(operations)
    return tuple(op for op, following in zip(operations, (*operations[1:], None))
                 if not (isinstance(op, DecodeImage)
                         and isinstance(following, (RandomResizedCrop, ResizeCenterCrop))
                         and following.key == op.key))


@dataclasses.dataclass(frozen=True)
class SelectKeys(grain.MapTransform):
    """Keeps only `keys` (e.g. drops caption strings before batching into arrays)."""
    keys: Sequence[str]

    def map(self, element):
        return {key: _field(element, key, self) for key in self.keys}
