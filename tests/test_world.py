"""Tests of the embedded world: determinism, splits, captions, domain shift, grain source."""
import collections
import pickle
import re

import numpy as np
import pytest

from wlsft_jax.data import world


def _words(caption):
    return caption.split()


def _mentions(caption, phrase):
    return re.search(rf"\b{re.escape(phrase)}\b", caption) is not None


def test_public_constants():
    assert len(world.CLASSES) >= 10 and len(set(world.CLASSES)) == len(world.CLASSES)
    assert len(world.DOMAINS) >= 5 and world.DOMAINS[0] == "photo"
    assert world.SPLITS == ("train", "val", "test")
    assert list(world.VOCABULARY) == sorted(set(world.VOCABULARY))
    assert set(world.CLASSES) <= set(world.VOCABULARY)
    for name in world.CLASSES:  # Class names work in prompt templates: one lowercase word.
        assert re.fullmatch(r"[a-z]+", name)


@pytest.mark.parametrize("domain", world.DOMAINS)
def test_same_inputs_give_the_same_example(domain):
    first = world.example(12, domain=domain, split="val", image_size=24, seed=3)
    again = world.example(12, domain=domain, split="val", image_size=24, seed=3)
    assert first["image"].shape == (24, 24, 3) and first["image"].dtype == np.uint8
    np.testing.assert_array_equal(first["image"], again["image"])
    assert first["caption"] == again["caption"]
    assert first["label"] == again["label"] == world.scene(12, domain=domain, split="val",
                                                             seed=3).label
    assert first["domain"] == domain
    assert isinstance(first["label"], int) and 0 <= first["label"] < len(world.CLASSES)


def test_different_index_or_seed_gives_a_different_example():
    base = world.example(5, domain="photo")
    for other in (world.example(6, domain="photo"), world.example(5, domain="photo", seed=1)):
        assert not np.array_equal(base["image"], other["image"])
        assert base["caption"] != other["caption"]


@pytest.mark.parametrize("image_size", [8, 17, 64, 224])
def test_image_sizes(image_size):
    image = world.example(0, domain="neon", image_size=image_size)["image"]
    assert image.shape == (image_size, image_size, 3)
    assert image.std() > 5  # Something is drawn, not a blank canvas.


def test_splits_are_disjoint():
    seen = {}
    for split in world.SPLITS:
        for index in range(300):
            image = world.example(index, domain="photo", split=split, image_size=16)["image"]
            seen.setdefault(image.tobytes(), set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())
    assert len(seen) == 3 * 300


def test_attributes_are_spread_over_their_choices():
    scenes = [world.scene(i, domain="clipart") for i in range(1100)]
    labels = collections.Counter(s.label for s in scenes)
    assert set(labels) == set(range(len(world.CLASSES)))
    assert min(labels.values()) > 50  # About 100 each.
    assert {s.count for s in scenes} == {1, 2, 3}
    assert len({s.colour for s in scenes}) == len(world.COLOURS)
    assert len({s.position for s in scenes}) == len(world.POSITIONS)
    for s in scenes:
        assert len(s.centres) == len(s.angles) == s.count
        assert all(s.radius <= c <= 1 - s.radius for centre in s.centres for c in centre)


def test_captions_describe_the_true_attributes():
    shape_omitted = 0
    domain_named = 0
    colour_named = 0
    where_named = 0
    total = 0
    for domain in world.DOMAINS:
        for index in range(200):
            caption = world.example(index, domain=domain, image_size=8)["caption"]
            scene = world.scene(index, domain=domain)
            total += 1
            assert set(_words(caption)) <= set(world.VOCABULARY), caption
            colour_named += any(_mentions(caption, w) for w in world.COLOUR_WORDS[scene.colour])
            for other, words in world.COLOUR_WORDS.items():  # Never names a wrong colour.
                if other != scene.colour and other != scene.background:
                    assert not any(_mentions(caption, w) for w in words[:1]), caption
            count_words = {1: ("a", "an", "one", "single"), 2: ("two", "pair"), 3: ("three",)}
            assert any(_mentions(caption, w) for w in count_words[scene.count]), caption
            wrong_counts = {"one", "single", "two", "pair", "three"} - set(count_words[scene.count])
            assert not wrong_counts & set(_words(caption)), caption
            where_named += any(_mentions(caption, w) for w in world.POSITIONS[scene.position][1])
            names_shape = any(_mentions(caption, word)
                              for pair in world.SHAPE_WORDS[scene.shape] for word in pair)
            if not names_shape:
                shape_omitted += 1
                assert any(_mentions(caption, word)
                           for pair in world.GENERIC_SHAPE_WORDS for word in pair), caption
            for other in world.CLASSES:  # Never names a wrong shape.
                if other != scene.shape:
                    assert not any(_mentions(caption, word) for word, _ in
                                   world.SHAPE_WORDS[other][:1]), (caption, scene.shape)
            domain_named += any(_mentions(caption, w) for w in world.DOMAIN_WORDS[domain])
    assert 0.08 < shape_omitted / total < 0.25
    assert 0.2 < domain_named / total < 0.8
    # Colour and position are named only sometimes (world.*_MENTIONED_PROBABILITY).
    assert 0.35 < colour_named / total < 0.65
    assert 0.25 < where_named / total < 0.55


def test_captions_vary():
    captions = {world.example(i, domain="sketch", image_size=8)["caption"] for i in range(200)}
    assert len(captions) > 180
    assert len({c.split()[0] for c in captions}) >= 5  # Several templates and count words.


def _pixels_and_labels(domain, split, count, image_size=16):
    images = [world.example(i, domain=domain, split=split, image_size=image_size)
              for i in range(count)]
    pixels = np.stack([e["image"] for e in images]).reshape(count, -1).astype(np.float32) / 255
    return pixels, np.array([e["label"] for e in images])


def test_domain_shift_is_real_and_shape_is_learnable():
    """A pixel-space classifier fitted on photos is well above chance on photos, clearly worse
    on every other domain."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    train_pixels, train_labels = _pixels_and_labels("photo", "train", 4000)
    scaler = preprocessing.StandardScaler().fit(train_pixels)
    with threadpoolctl.threadpool_limits(1):  # Many threads only fight over CI's two cores.
        classifier = linear_model.LogisticRegression(C=0.03, max_iter=150, tol=1e-3).fit(
            scaler.transform(train_pixels), train_labels)
    accuracy = {}
    for domain in world.DOMAINS:
        test_pixels, test_labels = _pixels_and_labels(domain, "test", 800)
        accuracy[domain] = classifier.score(scaler.transform(test_pixels), test_labels)
    chance = 1 / len(world.CLASSES)
    assert accuracy["photo"] > 2.2 * chance, accuracy
    for domain in world.DOMAINS[1:]:
        assert accuracy[domain] < accuracy["photo"] - 0.05, accuracy


def test_world_source_interleaves_domains():
    source = world.WorldSource(split="val", domains=("sketch", "neon", "photo"),
                               examples_per_domain=4, image_size=16, seed=2)
    assert len(source) == 12
    for key in (0, 1, 2, 7, 11):
        record = source[key]
        domain = ("sketch", "neon", "photo")[key % 3]
        expected = world.example(key // 3, domain=domain, split="val", image_size=16, seed=2)
        np.testing.assert_array_equal(record["image"], expected["image"])
        assert record["caption"] == expected["caption"]
        assert record["label"] == expected["label"] and record["label"].dtype == np.int32
        assert record["domain"] == world.DOMAINS.index(domain)
        assert record["domain"].dtype == np.int32
    assert source[np.int64(4)]["caption"] == source[4]["caption"]


def test_world_source_is_a_picklable_grain_source():
    grain = pytest.importorskip("grain")
    source = world.WorldSource(split="train", domains="painting", examples_per_domain=10)
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    assert "painting" in repr(source) and "examples_per_domain=10" in repr(source)
    copy = pickle.loads(pickle.dumps(source))
    assert repr(copy) == repr(source)
    np.testing.assert_array_equal(copy[9]["image"], source[9]["image"])

    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1,
                                            shard_options=grain.sharding.NoSharding()),
        operations=[grain.transforms.Batch(batch_size=4, drop_remainder=True)])
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 32, 32, 3)


def test_world_source_feeds_grain_worker_processes():
    grain = pytest.importorskip("grain")
    source = world.WorldSource(split="val", domains=("photo", "neon"), examples_per_domain=8,
                               image_size=16)
    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(len(source), shuffle=True, num_epochs=1, seed=0,
                                            shard_options=grain.sharding.NoSharding()),
        operations=[grain.transforms.Batch(batch_size=4, drop_remainder=True)],
        worker_count=2)
    loaded = sorted((str(caption), image.tobytes()) for batch in loader
                    for caption, image in zip(batch["caption"], batch["image"]))
    expected = sorted((source[key]["caption"], source[key]["image"].tobytes())
                      for key in range(len(source)))
    assert loaded == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(domain="cartoon"), "photo, sketch"),
    (dict(domain="photo", split="training"), "train, val, test"),
    (dict(domain="photo", image_size=7), "8 to 224"),
    (dict(domain="photo", image_size=225), "8 to 224"),
    (dict(domain="photo", image_size=32.0), "8 to 224"),
    (dict(domain="photo", seed=-1), "non-negative"),
])
def test_example_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        world.example(0, **kwargs)


def test_example_rejects_a_negative_index():
    with pytest.raises(ValueError, match="non-negative"):
        world.example(-1, domain="photo")


@pytest.mark.parametrize("kwargs, message", [
    (dict(domains=("photo", "oil")), "photo, sketch"),
    (dict(domains=()), "photo, sketch"),
    (dict(domains=("photo",), split="dev"), "train, val, test"),
    (dict(domains=("photo",), examples_per_domain=0), "positive"),
    (dict(domains=("photo",), image_size=300), "8 to 224"),
])
def test_world_source_rejects_bad_arguments(kwargs, message):
    arguments = dict(split="train", examples_per_domain=5) | kwargs
    with pytest.raises(ValueError, match=message):
        world.WorldSource(**arguments)


@pytest.mark.parametrize("key", [-1, 10])
def test_world_source_rejects_keys_out_of_range(key):
    source = world.WorldSource(split="test", domains=("photo", "sketch"), examples_per_domain=5)
    with pytest.raises(ValueError, match="0 to 9|non-negative"):
        source[key]


def test_domain_weights_set_the_mix_and_every_record_is_a_distinct_example():
    source = world.WorldSource(split="train", domains=("photo", "sketch", "neon"),
                               examples_per_domain=6, image_size=8, domain_weights=(3, 1, 1))
    assert len(source) == 30
    records = [source[i] for i in range(len(source))]
    domains = [world.DOMAINS[int(r["domain"])] for r in records]
    assert domains.count("photo") == 18 and domains.count("sketch") == domains.count("neon") == 6
    # Each record is its own example: photo examples 0..17, the others 0..5, none twice.
    photo = [r for r in records if world.DOMAINS[int(r["domain"])] == "photo"]
    expected = {world.example(i, domain="photo", image_size=8)["caption"] for i in range(18)}
    assert {r["caption"] for r in photo} == expected
    # Any stretch of one cycle (5 records) holds the mix exactly.
    assert sorted(domains[:5]) == ["neon", "photo", "photo", "photo", "sketch"]


@pytest.mark.parametrize("weights", [(1, 1), (0, 1, 1), (1.5, 1, 1)])
def test_bad_domain_weights_are_rejected(weights):
    with pytest.raises(ValueError, match="domain_weights"):
        world.WorldSource(split="train", domains=("photo", "sketch", "neon"),
                          examples_per_domain=2, domain_weights=weights)


def test_world_eval_sets_render_each_record_once():
    from wlsft_jax import recipes
    from wlsft_jax.data import tasks

    task = tasks.build(recipes.world_data(image_size=8, eval_examples_per_domain=4), seed=0)
    eval_set = task.eval_sets[1]
    calls = []
    inner = eval_set.source._source
    eval_set.source._source = type("Counting", (), {
        "__len__": lambda self: len(inner),
        "__getitem__": lambda self, i: calls.append(i) or inner[i]})()
    first = [eval_set.source[i] for i in range(4)]
    again = [eval_set.source[i] for i in range(4)]
    assert calls == [0, 1, 2, 3]
    expected = world.WorldSource(split="test", domains=eval_set.name, examples_per_domain=4,
                                 image_size=8)
    for a, b, c in zip(first, again, (expected[i] for i in range(4))):
        np.testing.assert_array_equal(a["image"], c["image"])
        assert a is b


def test_world_task_validates_on_its_val_split_and_watches_a_fixed_ood_subset():
    """The ID validation set is the val split of the ID domain (images neither trained nor
    tested on); the periodic sets are it and each OOD set cut to a fixed evenly spaced subset."""
    from wlsft_jax import recipes
    from wlsft_jax.data import tasks

    task = tasks.build(recipes.world_data(image_size=8, eval_examples_per_domain=6), seed=0)
    val = task.val_set
    assert (val.name, val.kind, len(val.source)) == ("photo", tasks.VAL, 6)
    expected = world.WorldSource(split="val", domains=("photo",), examples_per_domain=6,
                                 image_size=8)
    np.testing.assert_array_equal(val.source[5]["image"], expected[5]["image"])
    sets = tasks.periodic_eval_sets(task, ood_examples=3)
    assert [(s.name, s.kind, len(s.source)) for s in sets] == [("photo", tasks.VAL, 6)] + [
        (d, tasks.OOD, 3) for d in ("sketch", "painting", "clipart", "neon")]
    np.testing.assert_array_equal(sets[1].source[2]["image"], task.eval_sets[1].source[5]["image"])
