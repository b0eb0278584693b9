"""Tests for the fused decode of wlsft_jax.data.transforms: RandomResizedCrop and
ResizeCenterCrop on encoded bytes against decoding first, the JPEG reduction rule, colour modes,
unchanged crop-box draws, and the wiring of fuse_decode into real tasks."""
import io

import numpy as np
from PIL import Image, ImageDraw, JpegImagePlugin
import pytest

from wlsft_jax import recipes
from wlsft_jax.data import tasks, transforms
from wlsft_jax.data.objectnet import CropBorder
from helpers import mocked_tfds

SIZE = 224
DECODE = transforms.DecodeImage()


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 image: smooth colour fields (upsampled coarse noise), a few sharp
    shapes, and fine noise, so that resampling differences show as they would in photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        left, top = rng.uniform(0, width), rng.uniform(0, height)
        box = [left, top, left + rng.uniform(0.05, 0.4) * width,
               top + rng.uniform(0.05, 0.4) * height]
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noise = rng.normal(0, 8, (height, width, 3))
    return np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, mode: str = "RGB", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def train_views(crop, encoded, seed):
    """(fused, unfused) RandomResizedCrop views of `encoded` with the same generator seed."""
    fused = crop.random_map({"image": encoded}, np.random.default_rng(seed))["image"]
    unfused = crop.random_map(DECODE.map({"image": encoded}), np.random.default_rng(seed))["image"]
    return fused, unfused


def mean_abs_difference(a, b) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (333, 500)])
@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.9, 1.0)])
def test_fused_train_view_of_an_imagenet_sized_jpeg_is_bitwise_the_unfused_one(shape, scale):
    """No crop of a ~500 x 375 photo is twice 224 px on both sides, so the JPEG is decoded at
    full size and the fused view is exactly decode-then-crop."""
    encoded = jpeg(photo(*shape))
    crop = transforms.RandomResizedCrop(SIZE, scale=scale, resample="bicubic")
    for seed in range(12):
        fused, unfused = train_views(crop, encoded, seed)
        assert fused.shape == (SIZE, SIZE, 3) and fused.dtype == np.uint8
        np.testing.assert_array_equal(fused, unfused, err_msg=f"seed {seed}")


def test_crop_box_draws_are_unchanged():
    """The boxes of the code before the fused decode (recorded from it), and the fused path
    draws exactly what crop_box draws, so later draws (the flip) see the same generator."""
    expected = {(0.08, 1.0): [(302, 35, 431, 206), (19, 3, 385, 285), (219, 48, 450, 308),
                              (273, 34, 433, 220)],
                (0.9, 1.0): [(17, 0, 496, 373), (2, 0, 483, 371), (0, 0, 500, 375),
                             (11, 0, 498, 375)]}
    encoded = jpeg(photo(375, 500))
    for scale, boxes in expected.items():
        crop = transforms.RandomResizedCrop(SIZE, scale=scale, resample="bicubic")
        for seed, box in enumerate(boxes):
            assert crop.crop_box(375, 500, np.random.default_rng(seed)) == box
            drawn, fused = np.random.default_rng(seed), np.random.default_rng(seed)
            crop.crop_box(375, 500, drawn)
            crop.random_map({"image": encoded}, fused)
            assert fused.bit_generator.state == drawn.bit_generator.state


@pytest.mark.parametrize("box,reduction", [
    ((300, 300), 1), ((447, 1000), 1), ((448, 448), 2), ((1000, 600), 2), ((896, 900), 4),
    ((1791, 4000), 4), ((1792, 1792), 8), ((6000, 5000), 8)])
def test_jpeg_reduction_is_the_largest_that_keeps_the_box_at_least_the_output_size(box,
                                                                                   reduction):
    assert transforms.jpeg_reduction(*box, SIZE) == reduction


def _recording_draft(monkeypatch):
    """Records the (mode, size) of every JPEG draft request and the scale it chose."""
    calls = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording(image, mode, size):
        full_width = image.width
        result = draft(image, mode, size)
        calls.append((mode, size, None if result is None else full_width / result[1][2]))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    return calls


def test_large_jpegs_are_decoded_reduced_and_match_the_full_decode(monkeypatch):
    """A 1600 x 1200 photo: FLYP's crops (>= 0.9 of the area) and the eval view (shorter side
    1200) are decoded at 1/4 (the box stays >= 300 px >= 224 px) and differ from the full-size
    decode by resampling noise only. A box misplaced by one reduced pixel would differ by
    more (checked below), so the bound is tight enough to catch a wrong mapping."""
    calls = _recording_draft(monkeypatch)
    image = photo(1200, 1600, seed=1)
    encoded = jpeg(image)
    crop = transforms.RandomResizedCrop(SIZE, scale=(0.9, 1.0), resample="bicubic")
    differences = []
    for seed in range(4):
        fused, unfused = train_views(crop, encoded, seed)
        differences.append(mean_abs_difference(fused, unfused))
        # The box with its right and bottom edges moved in by 4 full-size pixels (one at 1/4).
        left, top, right, bottom = crop.crop_box(1200, 1600, np.random.default_rng(seed))
        misplaced = np.asarray(Image.fromarray(DECODE.map({"image": encoded})["image"]).resize(
            (SIZE, SIZE), Image.Resampling.BICUBIC, box=(left, top, right - 4, bottom - 4)))
        assert mean_abs_difference(misplaced, unfused) > 2 * max(differences[-1], 0.5)
    assert max(differences) < 1.0, differences
    assert [scale for _, _, scale in calls] == [4] * 4

    center = transforms.ResizeCenterCrop(SIZE)
    fused = center.map({"image": encoded})["image"]
    unfused = center.map(DECODE.map({"image": encoded}))["image"]
    assert calls[-1][2] == 4
    assert mean_abs_difference(fused, unfused) < 1.0


def test_imagenet_sized_jpegs_are_decoded_at_full_size(monkeypatch):
    calls = _recording_draft(monkeypatch)
    encoded = jpeg(photo(375, 500))
    crop = transforms.RandomResizedCrop(SIZE, scale=(0.08, 1.0), resample="bicubic")
    for seed in range(8):
        crop.random_map({"image": encoded}, np.random.default_rng(seed))
    transforms.ResizeCenterCrop(SIZE).map({"image": encoded})
    assert calls == []


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (37, 53), (900, 700), (1200, 1600)])
def test_fused_eval_view_is_resize_then_centre_crop(shape):
    """Against the reference written out: decode, PIL bicubic resize of the whole image with the
    shorter side to 224 (the longer truncated), the central crop rounded as torchvision's
    CenterCrop. Equal within 1 of 255 without a reduced decode, within resampling noise with
    one (900 x 700 is reduced by 2, 1200 x 1600 by 4)."""
    encoded = jpeg(photo(*shape, seed=2))
    decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
    height, width = shape
    if height <= width:
        resized_size = (int(SIZE * width / height), SIZE)
    else:
        resized_size = (SIZE, int(SIZE * height / width))
    left = int(round((resized_size[0] - SIZE) / 2))
    top = int(round((resized_size[1] - SIZE) / 2))
    reference = np.asarray(decoded.resize(resized_size, Image.Resampling.BICUBIC).crop(
        (left, top, left + SIZE, top + SIZE)))
    fused = transforms.ResizeCenterCrop(SIZE).map({"image": encoded, "label": 3})
    assert fused["label"] == 3
    assert fused["image"].shape == (SIZE, SIZE, 3) and fused["image"].dtype == np.uint8
    difference = np.abs(fused["image"].astype(int) - reference)
    if min(shape) < 2 * SIZE:
        assert difference.max() <= 1
    else:
        assert difference.mean() < 1.0


def test_a_jpeg_smaller_than_the_output_is_upsampled_as_before():
    encoded = jpeg(photo(30, 41))
    crop = transforms.RandomResizedCrop(SIZE, scale=(0.08, 1.0), resample="bicubic")
    for seed in range(4):
        fused, unfused = train_views(crop, encoded, seed)
        assert fused.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(fused, unfused)
    center = transforms.ResizeCenterCrop(SIZE)
    np.testing.assert_array_equal(center.map({"image": encoded})["image"],
                                  center.map(DECODE.map({"image": encoded}))["image"])


@pytest.mark.parametrize("shape", [(375, 500), (1200, 1600)])
def test_grayscale_and_cmyk_jpegs_become_rgb(shape):
    """An L JPEG gives three equal channels; a CMYK JPEG (also decoded reduced when large)
    gives the RGB that DecodeImage gives, as do RGB ones."""
    image = photo(*shape, seed=3)
    crop = transforms.RandomResizedCrop(SIZE, scale=(0.9, 1.0), resample="bicubic")
    center = transforms.ResizeCenterCrop(SIZE)
    tolerance = 0 if max(shape) < 2 * SIZE else 1.0
    for mode in ("L", "CMYK"):
        encoded = jpeg(image, mode=mode)
        assert Image.open(io.BytesIO(encoded)).mode == mode
        fused, unfused = train_views(crop, encoded, seed=0)
        eval_view = center.map({"image": encoded})["image"]
        for view, reference in ((fused, unfused),
                                (eval_view, center.map(DECODE.map({"image": encoded}))["image"])):
            assert view.shape == (SIZE, SIZE, 3) and view.dtype == np.uint8
            assert mean_abs_difference(view, reference) <= tolerance
        if mode == "L":
            assert (fused == fused[..., :1]).all() and (eval_view == eval_view[..., :1]).all()
        else:
            assert np.abs(fused.astype(int) - fused[..., :1]).max() > 10  # Colour kept.


def test_png_bytes_are_decoded_at_full_size():
    """Only JPEG decoders reduce; a large PNG goes through the same code at full size."""
    buffer = io.BytesIO()
    Image.fromarray(photo(1000, 1200, seed=4)).save(buffer, format="PNG")
    encoded = buffer.getvalue()
    crop = transforms.RandomResizedCrop(SIZE, scale=(0.9, 1.0), resample="bicubic")
    fused, unfused = train_views(crop, encoded, seed=5)
    np.testing.assert_array_equal(fused, unfused)


def test_resize_center_crop_of_an_array_resamples_only_the_crop():
    image = photo(61, 100, seed=5)
    out = transforms.ResizeCenterCrop(32).map({"image": image})["image"]
    resized = Image.fromarray(image).resize((52, 32), Image.Resampling.BICUBIC)
    expected = np.asarray(resized.crop((10, 0, 42, 32)))
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert transforms.ResizeCenterCrop(32).box(61, 100) == pytest.approx(
        (10 * 100 / 52, 0, 42 * 100 / 52, 61))


def test_flip_and_normalize_are_bitwise_the_plain_numpy_ones():
    image = photo(7, 11, seed=6)
    flip = transforms.RandomHorizontalFlip()
    flips = [flip.random_map({"image": image}, np.random.default_rng(s))["image"]
             for s in range(16)]
    assert all(np.array_equal(f, image) or np.array_equal(f, image[:, ::-1]) for f in flips)
    assert any(np.array_equal(f, image[:, ::-1]) for f in flips)
    normalize = transforms.Normalize.named("clip")
    mean, std = (np.asarray(v, np.float32) for v in transforms.MEAN_STD["clip"])
    for array in (image, image[:, ::-1]):
        out = normalize.map({"image": array})["image"]
        assert out.dtype == np.float32 and out.shape == (7, 11, 3)
        np.testing.assert_array_equal(out, (array.astype(np.float32) / 255.0 - mean) / std)


def test_fuse_decode_drops_only_a_decode_that_a_resizing_view_takes_over():
    crop = transforms.RandomResizedCrop(SIZE)
    center = transforms.ResizeCenterCrop(SIZE)
    normalize = transforms.Normalize.named("clip")
    assert transforms.fuse_decode([DECODE, crop, normalize]) == (crop, normalize)
    assert transforms.fuse_decode((DECODE, center)) == (center,)
    kept = (DECODE, CropBorder(), center)  # ObjectNet crops its border from the decoded image.
    assert transforms.fuse_decode(kept) == kept
    other_key = transforms.DecodeImage(key="other")
    assert transforms.fuse_decode((other_key, crop)) == (other_key, crop)
    assert transforms.fuse_decode((crop, DECODE)) == (crop, DECODE)


def test_real_tasks_decode_inside_their_views(tfds_dir):
    """A real task's train, eval, validation and k-NN-bank operations start with the resizing
    view itself, and give what decoding first gives on JPEG records (no reduced decode: the
    image is smaller than twice the output)."""
    encoded = jpeg(photo(40, 56, seed=7))
    records = [{"image": encoded, "label": np.int64(label)} for label in (1, 0, 93, 1)]
    data = recipes.real_data("domainnet", data_dir=tfds_dir, image_size=32, worker_count=0,
                             crop_scale=(0.5, 1.0))
    with mocked_tfds(tfds_dir, records):
        task = tasks.build(data, seed=0)
    eval_sets = (*task.eval_sets, task.train_eval_set, task.val_set)
    assert isinstance(task.train_operations[0], transforms.RandomResizedCrop)
    assert all(isinstance(s.operations[0], transforms.ResizeCenterCrop) for s in eval_sets)
    record = {"image": encoded, "label": 0, "mask": True}
    for operations in (task.train_operations, eval_sets[0].operations):
        fused = apply(operations, record)
        assert fused["image"].shape == (32, 32, 3) and fused["image"].dtype == np.float32
        np.testing.assert_array_equal(fused["image"],
                                      apply(operations, DECODE.map(record))["image"])


def apply(operations, element, seed=0):
    """`element` through grain transforms in order, random ones drawing from one generator."""
    rng = np.random.default_rng(seed)
    for op in operations:
        element = op.random_map(element, rng) if hasattr(op, "random_map") else op.map(element)
    return element
