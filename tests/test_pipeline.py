"""Tests for wlsft_jax.data.{pipeline,transforms,templates}: resumable, sharded, deterministic
training streams; padded eval passes; per-example transforms."""
import io
import string

import numpy as np
from PIL import Image
import pytest

from wlsft_jax import recipes
from wlsft_jax.data import pipeline, tasks
from wlsft_jax.data import templates
from wlsft_jax.data import tokenizer as tokenizer_lib
from wlsft_jax.data import transforms
from wlsft_jax.data import world

CLASS_NAMES = ("circle", "square", "triangle")


class TinySource:
    """In-memory records: image filled with the record's index, label, caption."""

    def __init__(self, size: int):
        self._size = size

    def __len__(self):
        return self._size

    def __getitem__(self, index):
        return {"index": np.int32(index),
                "image": np.full((8, 8, 3), index % 256, dtype=np.uint8),
                "label": np.int32(index % len(CLASS_NAMES)),
                "caption": f"a photo of a {CLASS_NAMES[index % len(CLASS_NAMES)]}."}

    def __repr__(self):
        return f"TinySource(size={self._size})"


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_lib.world_tokenizer(CLASS_NAMES, context_length=12)


def _operations(tokenizer):
    """Random image augmentations plus FLYP class prompts: every kind of randomness."""
    return [transforms.RandomResizedCrop(6, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip(),
            transforms.Normalize.named("world"),
            transforms.ClassPrompts(tokenizer, CLASS_NAMES, templates.OPENAI_IMAGENET_TEMPLATES)]


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("worker_count", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_train_loader_resumes_from_saved_state(tokenizer, worker_count):
    def make_loader():
        return pipeline.train_loader(TinySource(20), global_batch_size=4, seed=7,
                                     operations=_operations(tokenizer),
                                     worker_count=worker_count)

    iterator = iter(make_loader())
    _take(iterator, 7)  # Past the first epoch (5 batches), so the repeat is covered too.
    state = iterator.get_state()
    expected = _take(iterator, 6)
    restored = iter(make_loader())
    restored.set_state(state)
    _assert_same_batches(_take(restored, 6), expected)
    batch = expected[0]
    assert batch["image"].shape == (4, 6, 6, 3) and batch["image"].dtype == np.float32
    assert batch["tokens"].shape == (4, 12) and batch["tokens"].dtype == np.int32


def test_train_loader_is_deterministic(tokenizer):
    def first_batches(seed):
        loader = pipeline.train_loader(TinySource(20), global_batch_size=4, seed=seed,
                                       operations=_operations(tokenizer))
        return _take(iter(loader), 6)

    reference = first_batches(seed=1)
    _assert_same_batches(first_batches(seed=1), reference)
    other_seed = first_batches(seed=2)
    assert any((a["index"] != b["index"]).any() for a, b in zip(other_seed, reference))
    # Shuffled, and every record once per epoch (5 batches of 4 records).
    first_epoch = np.concatenate([batch["index"] for batch in reference[:5]])
    assert sorted(first_epoch) == list(range(20)) and list(first_epoch) != list(range(20))
    # Class prompts are sampled per example and step: the same record gets other prompts.
    prompts = {tuple(batch["tokens"][i]) for batch in reference for i in range(4)}
    assert len(prompts) > 2 * len(CLASS_NAMES)


def test_train_loader_shards_cover_data_without_overlap():
    shard_count, records = 3, 24
    epoch_per_shard = []
    for shard_index in range(shard_count):
        loader = pipeline.train_loader(TinySource(records), global_batch_size=6, seed=0,
                                       operations=[], shard_index=shard_index,
                                       shard_count=shard_count)
        batches = _take(iter(loader), 4)  # 8 records per shard, 2 per batch.
        assert all(batch["index"].shape == (2,) for batch in batches)
        epoch_per_shard.append({int(i) for batch in batches for i in batch["index"]})
    assert all(len(indices) == 8 for indices in epoch_per_shard)
    assert set().union(*epoch_per_shard) == set(range(records))


@pytest.mark.parametrize("records,batch_size,shard_count", [(10, 4, 1), (10, 4, 2), (7, 6, 3),
                                                            (2, 4, 4), (8, 4, 2)])
def test_eval_batches_count_every_example_once(tokenizer, records, batch_size, shard_count):
    operations = [transforms.Normalize.named("clip"), transforms.Tokenize(tokenizer)]
    counted, batch_counts = [], set()
    for shard_index in range(shard_count):
        batches = list(pipeline.eval_batches(TinySource(records), batch_size=batch_size,
                                             operations=operations, shard_index=shard_index,
                                             shard_count=shard_count))
        batch_counts.add(len(batches))
        for batch in batches:
            assert batch["mask"].shape == (batch_size // shard_count,)
            assert batch["mask"].dtype == bool
            assert batch["image"].shape == (batch_size // shard_count, 8, 8, 3)
            counted.extend(batch["index"][batch["mask"]].tolist())
    assert sorted(counted) == list(range(records))
    assert len(batch_counts) == 1  # Every process runs the same number of eval steps.


def test_loaders_reject_bad_batch_sizes_and_shards():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        pipeline.train_loader(TinySource(8), global_batch_size=5, operations=[], seed=0,
                              shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        pipeline.train_loader(TinySource(3), global_batch_size=4, operations=[], seed=0,
                              shard_index=0, shard_count=4)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.eval_batches(TinySource(8), batch_size=4, operations=[], shard_index=2,
                              shard_count=2)


def test_world_pipelines_end_to_end():
    """The embedded world through both pipelines: FLYP-style augmentation, captions tokenized
    with the world tokenizer (no unknown words, none truncated), resumable, masked eval."""
    world_tokens = tokenizer_lib.world_tokenizer(world.VOCABULARY + world.CLASSES)
    source = world.WorldSource(split="train", domains=world.DOMAINS[:2], examples_per_domain=6)
    operations = [transforms.RandomResizedCrop(24, scale=(0.9, 1.0)),
                  transforms.RandomHorizontalFlip(), transforms.Normalize.named("world"),
                  transforms.Tokenize(world_tokens)]

    def make_loader():
        return pipeline.train_loader(source, global_batch_size=4, seed=0, operations=operations)

    iterator = iter(make_loader())
    batch = next(iterator)
    assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    state = iterator.get_state()
    expected = _take(iterator, 4)
    restored = iter(make_loader())
    restored.set_state(state)
    _assert_same_batches(_take(restored, 4), expected)

    eval_operations = [transforms.Normalize.named("world"), transforms.Tokenize(world_tokens)]
    batches = list(pipeline.eval_batches(source, batch_size=5, operations=eval_operations))
    assert sum(int(b["mask"].sum()) for b in batches) == len(source) == 12
    tokens = np.concatenate([b["tokens"][b["mask"]] for b in batches])
    assert not (tokens == 1).any()  # No <unk>: the vocabulary covers the world's grammar.
    assert (tokens[:, -1] == world_tokens.pad_id).all()  # No caption was truncated.
    captions = [source[i]["caption"] for i in range(len(source))]
    assert world_tokens.decode(tokens) == [" ".join(c.lower().split()) for c in captions]


# ----------------------------------------------------------------------------- transforms


def _encoded(image, image_format):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def test_decode_image_reads_png_jpeg_and_grayscale():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decode = transforms.DecodeImage()
    np.testing.assert_array_equal(decode.map({"image": _encoded(image, "PNG")})["image"], image)
    jpeg = decode.map({"image": _encoded(image, "JPEG"), "label": 3})
    assert jpeg["image"].shape == (5, 7, 3) and jpeg["image"].dtype == np.uint8
    assert jpeg["label"] == 3
    gray = decode.map({"image": _encoded(image[..., 0], "PNG")})["image"]
    np.testing.assert_array_equal(gray, np.repeat(image[..., :1], 3, axis=-1))
    with pytest.raises(ValueError, match="encoded bytes"):
        decode.map({"image": image})


def test_random_crop_and_flip_shapes():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    crop = transforms.RandomResizedCrop(5, scale=(0.9, 1.0))
    out = crop.random_map({"image": image}, np.random.default_rng(0))["image"]
    assert out.shape == (5, 5, 3) and out.dtype == np.uint8
    again = crop.random_map({"image": image}, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(out, again)  # Deterministic given the generator.
    flip = transforms.RandomHorizontalFlip()
    outcomes = [flip.random_map({"image": image}, np.random.default_rng(seed))["image"]
                for seed in range(20)]
    assert any((o == image).all() for o in outcomes)
    assert any((o == image[:, ::-1]).all() for o in outcomes)


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.mark.parametrize("tall", [False, True])
def test_resize_center_crop_keeps_the_centre_of_a_long_image(tall):
    """40 x 100 stripes red | green | blue (30, 40, 30 columns): the shorter side goes to 20, the
    longer to 50, and the central 20 columns are the green stripe (source columns 30..69)."""
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, :30], image[:, 30:70], image[:, 70:] = RED, GREEN, BLUE
    if tall:
        image = np.ascontiguousarray(image.transpose(1, 0, 2))
    out = transforms.ResizeCenterCrop(20).map({"image": image, "label": 7})
    assert out["label"] == 7
    crop = out["image"] if not tall else out["image"].transpose(1, 0, 2)
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    # Bicubic at a scale of 1/2 reads 4 source pixels each side: columns 2..17 see only green.
    np.testing.assert_array_equal(crop[:, 2:18], np.broadcast_to(GREEN, (20, 16, 3)))
    # Only the edge columns blend with the neighbouring stripes; a square resize would show
    # 6 red and 6 blue columns.
    assert crop[..., 0].mean() < 20 and crop[..., 2].mean() < 20


def test_resize_center_crop_of_a_square_image_is_a_plain_bicubic_resize():
    image = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    out = transforms.ResizeCenterCrop(12).map({"image": image})["image"]
    expected = np.asarray(Image.fromarray(image).resize((12, 12), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)
    same_size = transforms.ResizeCenterCrop(30).map({"image": image})["image"]
    np.testing.assert_array_equal(same_size, image)


@pytest.mark.parametrize("shape,resized,box", [
    # (height, width) -> PIL size (width, height) after CLIP's Resize(16): the shorter side is 16,
    # the longer int(16 * long / short); then the (left, top, right, bottom) central box, its
    # offset int(round((long - 16) / 2)) as torchvision's CenterCrop rounds it.
    ((37, 53), (22, 16), (3, 0, 19, 16)),    # int(22.9) = 22; round(3.0) = 3.
    ((32, 42), (21, 16), (2, 0, 18, 16)),    # round(2.5) = 2 (to even).
    ((32, 46), (23, 16), (4, 0, 20, 16)),    # round(3.5) = 4 (to even).
    ((61, 20), (16, 48), (0, 16, 16, 32)),   # Tall: int(48.8) = 48; round(16.0) = 16.
    ((8, 11), (22, 16), (3, 0, 19, 16)),     # Upscaled: int(22.0) = 22.
])
def test_resize_center_crop_matches_pil_resize_then_crop(shape, resized, box):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = transforms.ResizeCenterCrop(16).map({"image": image})["image"]
    expected = np.asarray(Image.fromarray(image).resize(resized, Image.Resampling.BICUBIC)
                          .crop(box))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_random_resized_crop_respects_scale_and_ratio():
    crop = transforms.RandomResizedCrop(32, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    height, width = 96, 128
    fractions = []
    for seed in range(300):
        left, top, right, bottom = crop.crop_box(height, width, np.random.default_rng(seed))
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        fractions.append((right - left) * (bottom - top) / (height * width))
        assert 3 / 4 - 0.02 <= (right - left) / (bottom - top) <= 4 / 3 + 0.02
    assert 0.9 - 0.02 <= min(fractions) and max(fractions) <= 1.0
    assert max(fractions) - min(fractions) > 0.05  # The scale range is really sampled.
    with pytest.raises(ValueError, match="scale"):
        transforms.RandomResizedCrop(32, scale=(0.5, 1.5))


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_random_resized_crop_resamples_its_box_with_pil(resample):
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    crop = transforms.RandomResizedCrop(16, scale=(0.5, 1.0), resample=resample)
    out = crop.random_map({"image": image}, np.random.default_rng(3))["image"]
    box = crop.crop_box(40, 56, np.random.default_rng(3))
    expected = Image.fromarray(image).resize((16, 16), transforms.RESAMPLING[resample], box=box)
    np.testing.assert_array_equal(out, np.asarray(expected))
    with pytest.raises(ValueError, match=r"resample='nearest'; valid: \['bilinear', 'bicubic'\]"):
        transforms.RandomResizedCrop(16, resample="nearest")


def test_real_data_trains_on_bicubic_crops_and_the_world_on_bilinear_ones():
    for data, resample in ((recipes.world_data(), "bilinear"),
                           (recipes.real_data("imagenet"), "bicubic")):
        [crop] = [op for op in tasks._augment(data)
                  if isinstance(op, transforms.RandomResizedCrop)]
        assert crop.resample == resample


def test_normalize_values():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[0, 0] = 255
    out = transforms.Normalize.named("clip").map({"image": image})["image"]
    mean, std = (np.asarray(v, np.float32) for v in transforms.MEAN_STD["clip"])
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[0, 0], (1 - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[1, 1], -mean / std, rtol=1e-6)
    world = transforms.Normalize.named("world").map({"image": image})["image"]
    assert world.min() == -1 and world.max() == 1
    with pytest.raises(ValueError, match="valid names.*clip"):
        transforms.Normalize.named("imagenet21k")


def test_tokenize_and_class_prompts(tokenizer):
    tokens = transforms.Tokenize(tokenizer).map({"caption": b"a photo of a circle."})["tokens"]
    assert tokens.shape == (12,) and tokens.dtype == np.int32
    assert tokenizer.decode(tokens[None]) == ["a photo of a circle"]
    prompts = transforms.ClassPrompts(tokenizer, CLASS_NAMES, templates.OPENAI_IMAGENET_TEMPLATES)
    decoded = {tokenizer.decode(prompts.random_map({"label": 2}, np.random.default_rng(s))[
        "tokens"][None])[0] for s in range(40)}
    assert len(decoded) > 10 and all("triangle" in text for text in decoded)
    allowed = {" ".join(t.format("triangle").replace(".", " ").replace("-", " ").split())
               for t in templates.OPENAI_IMAGENET_TEMPLATES}
    assert decoded <= allowed


def test_transforms_reject_bad_input(tokenizer):
    with pytest.raises(ValueError, match="placeholders \\['name'\\]"):
        transforms.ClassPrompts(tokenizer, CLASS_NAMES, ["a photo of a {name}."])
    with pytest.raises(ValueError, match="exactly one"):
        transforms.ClassPrompts(tokenizer, CLASS_NAMES, ["a {} and a {}."])
    with pytest.raises(ValueError, match="malformed"):
        transforms.ClassPrompts(tokenizer, CLASS_NAMES, ["a photo of a {."])
    prompts = transforms.ClassPrompts(tokenizer, CLASS_NAMES, templates.SIMPLE_TEMPLATES)
    with pytest.raises(ValueError, match="'label'.*\\['caption', 'image'\\]"):
        prompts.random_map({"caption": "x", "image": 0}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="valid labels: 0..2"):
        prompts.random_map({"label": 3}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="'image'"):
        transforms.ResizeCenterCrop(4).map({"img": np.zeros((4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match="DecodeImage first"):
        transforms.ResizeCenterCrop(4).map({"image": np.zeros((4, 6), np.uint8)})
    with pytest.raises(ValueError, match="uint8\\[H, W, 3\\]"):
        transforms.Normalize.named("clip").map({"image": np.zeros((4, 4), np.float32)})


def test_templates():
    assert len(templates.OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(set(templates.OPENAI_IMAGENET_TEMPLATES)) == 80
    assert templates.SIMPLE_TEMPLATES == ("a photo of a {}.",)
    for template_set in templates.TEMPLATES.values():
        for template in template_set:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            assert fields == [""], template
    assert templates.get_templates("simple") == templates.SIMPLE_TEMPLATES
    with pytest.raises(ValueError, match="valid names"):
        templates.get_templates("imagenet")
