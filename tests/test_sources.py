"""Real-dataset sources: TFDS (ArrayRecord, mocked records over real metadata files), ObjectNet,
WILDS and BREEDS folders written here, label spaces and the WILDS metrics."""
import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from wlsft_jax import recipes
from wlsft_jax.data import breeds, imagenet_classes, label_spaces, objectnet, pipeline, sources
from wlsft_jax.data import tasks, transforms, wilds
from helpers import (NUM_MOCK_EXAMPLES, mocked_tfds, png_bytes, write_breeds, write_csv,
                     write_fmow, write_iwildcam, write_objectnet)


def preprocessed(source, info, size=8):
    """Every record of `source` through decode, CLIP's eval view and normalise, as one batch."""
    operations = [*info.decode_operations, transforms.ResizeCenterCrop(size),
                  transforms.Normalize.named("clip"),
                  transforms.SelectKeys(("image", "label", "mask"))]
    return next(iter(pipeline.eval_batches(source, batch_size=len(source),
                                           operations=operations, shard_index=0, shard_count=1)))


@pytest.mark.parametrize("name,split,num_classes", [
    ("imagenet2012", "validation", 1000), ("imagenet_v2", "test", 1000),
    ("imagenet_sketch", "test", 1000), ("cifar10", "test", 10), ("cifar10_1", "test", 10),
    ("stl10", "test", 10), ("domainnet/sketch", "train", 345), ("domainnet/real", "test", 345)])
def test_tfds_source_reads_decodes_and_preprocesses(tfds_dir, name, split, num_classes):
    with mocked_tfds(tfds_dir):
        source, info = sources.get_source(name, split=split, data_dir=tfds_dir)
    assert len(source) == info.num_records == NUM_MOCK_EXAMPLES
    assert info.num_classes == num_classes and info.kind == "classification"
    assert info.label_subset is None
    record = source[0]
    assert set(record) == {"image", "label"} and isinstance(record["image"], bytes)
    assert record["label"].dtype == np.int32 and 0 <= record["label"] < num_classes
    batch = preprocessed(source, info)
    assert batch["image"].shape == (NUM_MOCK_EXAMPLES, 8, 8, 3)
    assert batch["image"].dtype == np.float32 and batch["mask"].all()
    restored = pickle.loads(pickle.dumps(source))
    assert repr(restored) == repr(source) and name in repr(source)
    np.testing.assert_array_equal(restored[1]["label"], source[1]["label"])


def test_class_names_of_imagenet_and_domainnet(tfds_dir):
    with mocked_tfds(tfds_dir):
        _, imagenet = sources.get_source("imagenet2012", split="train", data_dir=tfds_dir)
        _, domainnet = sources.get_source("domainnet/real", split="test", data_dir=tfds_dir)
    assert imagenet.class_names[:3] == ("tench", "goldfish", "great white shark")
    assert imagenet.class_names[-1] == "toilet paper"
    assert len(set(imagenet.class_names)) == 998  # CLIP repeats "missile" and "sunglasses".
    assert domainnet.class_names[0] == "aircraft carrier"
    assert sources.DOMAINNET_ID_DOMAIN not in sources.DOMAINNET_OOD_DOMAINS


def test_domainnet40_label_space_keeps_lpft_classes_in_their_order(tfds_dir):
    # TFDS labels (DomainNet's 345 classes, alphabetical): aircraft carrier 0, airplane 1,
    # butterfly 49, donut 93, sheep 258, zigzag 344.
    records = [{"image": png_bytes(), "label": np.int64(label)}
               for label in (1, 0, 49, 93, 344, 258)]
    for name, split in (("domainnet/sketch", "train"), ("domainnet/clipart", "test")):
        with mocked_tfds(tfds_dir, records):
            source, info = sources.get_source(name, split=split, data_dir=tfds_dir,
                                              label_space="domainnet40")
        assert info.class_names == label_spaces.DOMAINNET40_CLASSES and info.num_classes == 40
        # airplane 0, butterfly 36, donut 39, sheep 37 in SENTRY's label order; the others dropped.
        assert [int(source[i]["label"]) for i in range(len(source))] == [0, 36, 39, 37]
        assert info.num_records == 4 and "domainnet40" in repr(source)
    assert len(set(label_spaces.DOMAINNET40_CLASSES)) == 40
    with pytest.raises(ValueError, match=r"has classes \['ambulance', 'apple'.*lacks"):
        label_spaces.shared_label_map("domainnet40", label_spaces.CIFAR10_CLASSES)
    with pytest.raises(ValueError, match=r"valid: \[None, 'domainnet40'\]"):
        sources.get_source("domainnet/real", split="test", data_dir=tfds_dir,
                           label_space="cifar_stl")


def striped_png(height, width):
    """A PNG whose left, middle and right thirds are red, green and blue."""
    image = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    image[:, :third], image[:, third:-third], image[:, -third:] = (255, 0, 0), (0, 255, 0), (
        0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_domainnet_task_has_40_classes_and_evaluates_on_centre_crops(tfds_dir):
    """recipes' `domainnet` task (LP-FT's): every domain in the 40 classes, and each eval set
    (and the k-NN bank of training records) sees CLIP's view: a 12 x 36 image resized to 8 x 24,
    whose central 8 columns are the green stripe."""
    # The last record is held out of training for validation (tasks.HeldOut).
    records = [{"image": striped_png(12, 36), "label": np.int64(label)}
               for label in (1, 0, 93, 1)]
    data = recipes.real_data("domainnet", data_dir=tfds_dir, image_size=8, worker_count=0)
    with mocked_tfds(tfds_dir, records):
        task = tasks.build(data, seed=0)
    assert task.class_names == label_spaces.DOMAINNET40_CLASSES
    mean, std = (np.asarray(v, np.float32) for v in transforms.MEAN_STD["clip"])
    for eval_set in (*task.eval_sets, task.train_eval_set):
        assert eval_set.num_classes == 40 and eval_set.logits_transform is None
        batch = next(iter(pipeline.eval_batches(eval_set.source, batch_size=2,
                                                operations=eval_set.operations)))
        assert list(batch["label"]) == [0, 39] and batch["image"].shape == (2, 8, 8, 3)
        pixels = np.round((batch["image"] * std + mean) * 255)
        # Bicubic at scale 1/1.5 reads 3 source pixels each side: columns 2..5 see only green.
        np.testing.assert_array_equal(pixels[:, :, 2:6], np.broadcast_to((0, 255, 0),
                                                                         (2, 8, 4, 3)))


@pytest.mark.parametrize("name,class_ids", [("imagenet_r", imagenet_classes.IMAGENET_R_CLASS_IDS),
                                            ("imagenet_a", imagenet_classes.IMAGENET_A_CLASS_IDS)])
def test_imagenet_r_and_a_read_in_their_200_class_subsets(tfds_dir, name, class_ids):
    assert len(class_ids) == len(set(class_ids)) == 200 and list(class_ids) == sorted(class_ids)
    imagenet_ids = [class_ids[0], class_ids[199], class_ids[7]]
    records = [{"image": png_bytes(), "label": np.int64(i)} for i in imagenet_ids]
    with mocked_tfds(tfds_dir, records):
        source, info = sources.get_source(name, split="test", data_dir=tfds_dir)
    assert [int(source[i]["label"]) for i in range(3)] == [0, 199, 7]
    assert info.num_classes == 200 and info.label_subset == class_ids
    assert info.class_names[7] == imagenet_classes.IMAGENET_CLASSES[class_ids[7]]
    logits = np.arange(1000, dtype=np.float32)[None].repeat(2, axis=0)
    np.testing.assert_array_equal(label_spaces.restrict_logits(logits, info.label_subset)[0],
                                  np.asarray(class_ids, dtype=np.float32))

    outside = next(i for i in range(1000) if i not in class_ids)
    with mocked_tfds(tfds_dir, [{"image": png_bytes(), "label": np.int64(outside)}]):
        source, _ = sources.get_source(name, split="test", data_dir=tfds_dir)
    with pytest.raises(ValueError, match="outside the dataset's label space"):
        source[0]


@pytest.mark.parametrize("name,expected", [
    # CIFAR-10 labels 0..9 -> shared; frog (6) is dropped.
    ("cifar10", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
    # STL-10: airplane, bird, car, cat, deer, dog, horse, monkey (dropped), ship, truck.
    ("stl10", [0, 2, 1, 3, 4, 5, 6, 7, 8])])
def test_cifar_stl_shared_label_space(tfds_dir, name, expected):
    records = [{"image": png_bytes(), "label": np.int64(label)} for label in range(10)]
    with mocked_tfds(tfds_dir, records):
        source, info = sources.get_source(name, split="test", data_dir=tfds_dir,
                                          label_space="cifar_stl")
    assert info.class_names == label_spaces.CIFAR_STL_SHARED_CLASSES and info.num_classes == 9
    assert [int(source[i]["label"]) for i in range(len(source))] == expected
    assert "cifar_stl" in repr(source)


def test_coco_captions_pairs_each_image_with_each_of_its_captions(tfds_dir):
    records = [{"image": png_bytes(), "captions": {
        "id": np.arange(5), "text": np.asarray([f"image {i} caption {c}".encode()
                                                for c in range(5)], dtype=object)}}
               for i in range(2)]
    with mocked_tfds(tfds_dir, records):
        source, info = sources.get_source("coco_captions", split="val", data_dir=tfds_dir)
    assert len(source) == 10 and info.kind == "captions" and info.num_classes == 0
    assert source[7]["caption"] == "image 1 caption 2"
    decoded = info.decode_operations[0].map(source[7])
    assert decoded["image"].shape == (12, 10, 3)


def test_tfds_errors_name_what_to_provide(tfds_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"cifar10 is not prepared.*tfds build cifar10"):
        sources.get_source("cifar10", split="test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"--manual_dir"):
        sources.get_source("imagenet2012", split="train", data_dir=str(tmp_path))
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="TFDS_DATA_DIR"):
        sources.get_source("cifar10", split="test")
    with pytest.raises(ValueError, match=r"valid names: \['imagenet2012'"):
        sources.get_source("imagenet", split="test", data_dir=tfds_dir)
    with pytest.raises(ValueError, match=r"domainnet/sketch"):
        sources.get_source("domainnet", split="test", data_dir=tfds_dir)
    with pytest.raises(ValueError, match=r"valid options: \['label_space'\]"):
        sources.get_source("cifar10", split="test", data_dir=tfds_dir, classes=9)
    with pytest.raises(ValueError, match=r"valid: \[None, 'cifar_stl'\]"):
        sources.get_source("cifar10", split="test", data_dir=tfds_dir, label_space="stl")
    with mocked_tfds(tfds_dir):
        with pytest.raises(ValueError, match=r"no split 'train'; valid splits: \['test'\]"):
            sources.get_source("imagenet_r", split="train", data_dir=tfds_dir)
        monkeypatch.setenv(sources.DATA_DIR_ENV, tfds_dir)
        assert len(sources.get_source("cifar10", split="train[:50%]")[0]) == NUM_MOCK_EXAMPLES


def test_source_info_checks_class_name_counts():
    with pytest.raises(ValueError, match="label_subset has 2 entries but there are 3"):
        sources.SourceInfo(name="x", split="test", kind="classification", num_records=1,
                           class_names=("a", "b", "c"), label_subset=(1, 2))
    with pytest.raises(ValueError, match="valid kinds"):
        sources.SourceInfo(name="x", split="test", kind="detection", num_records=1)


def test_pool_and_restrict_logits_by_hand():
    logits = np.array([[0.0, 5.0, 1.0, 3.0], [4.0, -1.0, 2.0, 0.0]])
    pooled = label_spaces.pool_logits(logits, [(1, 3), (0,), (2, 3)])
    np.testing.assert_array_equal(pooled, [[5.0, 0.0, 3.0], [0.0, 4.0, 2.0]])
    np.testing.assert_array_equal(label_spaces.restrict_logits(logits, [3, 0]),
                                  [[3.0, 0.0], [0.0, 4.0]])
    with pytest.raises(ValueError, match="outside the 4 logit columns"):
        label_spaces.pool_logits(logits, [(1, 4)])
    with pytest.raises(ValueError, match="at least one ImageNet class"):
        label_spaces.pool_logits(logits, [(1,), ()])


def test_objectnet_folder_mapping_border_crop_and_pooling(tmp_path):
    write_objectnet(tmp_path, {"alarm_clock": 2, "banana": 1, "thing": 1})
    with pytest.warns(UserWarning, match="holds 4 images, not about 50000"):
        source, info = sources.get_source("objectnet", split="test", data_dir=str(tmp_path))
    assert info.class_names == ("alarm clock", "banana")
    assert info.imagenet_class_groups == ((1, 2), (0,))
    assert [int(source[i]["label"]) for i in range(len(source))] == [0, 0, 1]
    batch = preprocessed(source, info, size=4)
    # The red 2-pixel frame is cropped before resizing: only the green inside is left.
    green = (np.array([0, 200, 0]) / 255 - transforms.MEAN_STD["clip"][0]) / transforms.MEAN_STD[
        "clip"][1]
    np.testing.assert_allclose(batch["image"], np.broadcast_to(green, (3, 4, 4, 3)), atol=1e-5)
    logits = np.array([[9.0, 1.0, 2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(label_spaces.pool_logits(logits, info.imagenet_class_groups),
                                  [[2.0, 9.0]])
    assert repr(pickle.loads(pickle.dumps(source))) == repr(source)


def test_objectnet_errors(tmp_path):
    with pytest.raises(ValueError, match="ObjectNet not found"):
        sources.get_source("objectnet", split="test", data_dir=str(tmp_path))
    mappings = write_objectnet(tmp_path, {"alarm_clock": 1})
    with pytest.raises(ValueError, match=r"no split 'val'; valid splits: \['test'\]"):
        sources.get_source("objectnet", split="val", data_dir=str(tmp_path))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"folders \['banana'\]"):
        sources.get_source("objectnet", split="test", data_dir=str(tmp_path))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps({"Banana": "crane"}))
    with pytest.raises(ValueError, match="'crane'.*matches 2 lines"):
        objectnet.load_objectnet_mapping(mappings)
    (mappings / "pytorch_to_imagenet_2012_id.json").unlink()
    with pytest.raises(ValueError, match="pytorch_to_imagenet_2012_id.json not found"):
        sources.get_source("objectnet", split="test", data_dir=str(tmp_path))


def test_iwildcam_split_labels_and_class_names(tmp_path):
    rows = [("train", "a.jpg", 0), ("train", "b.jpg", 2), ("test", "c.jpg", 1),
            ("id_test", "d.jpg", 2)]
    root = write_iwildcam(tmp_path, rows)
    source, info = sources.get_source("iwildcam", split="train", data_dir=str(tmp_path))
    assert info.class_names == ("empty", "white-lipped peccary", "central american agouti")
    assert [int(source[i]["label"]) for i in range(len(source))] == [0, 2]
    assert preprocessed(source, info)["image"].shape == (2, 8, 8, 3)
    write_csv(root / "categories.csv", ("y", "name"), [(0, "empty"), (1, "peccary")])
    with pytest.raises(ValueError, match="got 2 class names for 3 classes"):
        sources.get_source("iwildcam", split="test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"valid splits: \['train', 'val', 'test'"):
        sources.get_source("iwildcam", split="validation", data_dir=str(tmp_path))


def test_fmow_wilds_splits_and_regions(tmp_path):
    rows = [("train", "airport", "FRA", "2010-03-01T10:00:00Z"),   # 0 train, Europe
            ("val", "zoo", "KEN", "2011-05-01T10:00:00Z"),         # 1 id_val, Africa
            ("test", "dam", "XXX", "2017-01-01T00:00:00Z"),        # 2 test, Other
            ("test", "barn", "USA", "2016-12-31T23:59:59Z"),       # 3 test, Americas
            ("seq", "barn", "USA", "2017-06-01T00:00:00Z"),        # 4 sequestered
            ("val", "park", "FRA", "2014-01-01T00:00:00Z")]        # 5 val (OOD), Europe
    write_fmow(tmp_path, rows)
    source, info = sources.get_source("fmow", split="test", data_dir=str(tmp_path))
    assert info.num_classes == 62 and len(source) == 2
    records = [source[0], source[1]]
    assert [wilds.FMOW_CATEGORIES[r["label"]] for r in records] == ["dam", "barn"]
    assert [wilds.FMOW_REGIONS[r["region"]] for r in records] == ["Other", "Americas"]
    expected = {"train": [0], "id_val": [1], "val": [5], "id_test": []}
    for split, row_ids in expected.items():
        split_source, _ = sources.get_source("fmow", split=split, data_dir=str(tmp_path))
        assert [wilds.FMOW_CATEGORIES[split_source[i]["label"]]
                for i in range(len(split_source))] == [rows[i][1] for i in row_ids]


def test_macro_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics", reason="test extra: pip install -e .[test]")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 8, size=200))
    expected = metrics.f1_score(labels, predictions, average="macro", labels=np.unique(labels))
    assert wilds.macro_f1(labels, predictions) == pytest.approx(expected)
    # By hand: class 0 has F1 2*1/(1+2), class 1 has 2*2/(2+2); class 2 is never a label.
    assert wilds.macro_f1([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx((2 / 3 + 1) / 2)


def test_worst_region_accuracy_by_hand():
    other = wilds.FMOW_REGIONS.index("Other")
    labels = [1, 1, 2, 2, 3, 3, 0]
    predictions = [1, 0, 2, 2, 0, 0, 0]
    regions = [0, 0, 1, 1, 3, other, other]
    # Region 0: 1/2; region 1: 2/2; region 3: 0/1; "Other" is ignored.
    assert wilds.worst_region_accuracy(labels, predictions, regions) == 0.0
    assert wilds.worst_region_accuracy(labels[:4], predictions[:4], regions[:4]) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        wilds.worst_region_accuracy(labels, predictions[:3], regions)


def test_breeds_from_hierarchy_file(tmp_path):
    hierarchy_file = write_breeds(tmp_path, "living17")
    source, info = sources.get_source("living17", split="val", data_dir=str(tmp_path))
    assert info.num_classes == 17 and info.class_names[3] == "super3" and len(source) == 17
    target, _ = sources.get_source("living17", split="val", data_dir=str(tmp_path),
                                   subpopulation="target")
    assert len(target) == 34 and int(target[5]["label"]) == 2
    with pytest.raises(ValueError, match="lists 17 superclasses; this hierarchy has 30"):
        sources.get_source("entity30", split="val", data_dir=str(tmp_path),
                           hierarchy_file=str(hierarchy_file))
    hierarchy_file.write_text(json.dumps({"classes": []}))
    with pytest.raises(ValueError, match="does not follow the BREEDS hierarchy format"):
        breeds.load_breeds_hierarchy(hierarchy_file, 17)


def test_missing_wilds_and_breeds_files_name_what_to_provide(tmp_path):
    data_dir = str(tmp_path)
    wilds_help = r"Download it with the `wilds` package \(see launch/prepare_data.md\)"
    with pytest.raises(ValueError, match=rf"iWildCam not found: .*iwildcam_v2.0 is not a "
                                         rf"directory\. {wilds_help}"):
        sources.get_source("iwildcam", split="train", data_dir=data_dir)
    root = write_iwildcam(tmp_path, [("train", "a.jpg", 0)])
    (root / "categories.csv").unlink()
    with pytest.raises(ValueError, match=r"iWildCam class names not found at .*categories.csv\. "
                                         r"Pass categories_csv="):
        sources.get_source("iwildcam", split="train", data_dir=data_dir)
    (root / "metadata.csv").unlink()
    with pytest.raises(ValueError, match=rf"iWildCam metadata not found at .*metadata.csv\. "
                                         rf"{wilds_help}"):
        sources.get_source("iwildcam", split="train", data_dir=data_dir)
    root = write_fmow(tmp_path, [("train", "dam", "FRA", "2010-03-01T10:00:00Z")])
    (root / "country_code_mapping.csv").unlink()
    with pytest.raises(ValueError, match=rf"FMoW country codes not found at "
                                         rf".*country_code_mapping.csv\. {wilds_help}"):
        sources.get_source("fmow", split="train", data_dir=data_dir)
    (root / "rgb_metadata.csv").unlink()
    with pytest.raises(ValueError, match=rf"FMoW metadata not found at .*rgb_metadata.csv\. "
                                         rf"{wilds_help}"):
        sources.get_source("fmow", split="train", data_dir=data_dir)

    with pytest.raises(ValueError, match=r"BREEDS hierarchy file not found at "
                                         r".*breeds/living17.json\. Write it once as "
                                         r"\{\"superclasses\".*launch/prepare_data.md"):
        sources.get_source("living17", split="train", data_dir=data_dir)
    write_breeds(tmp_path, "living17", splits=())
    with pytest.raises(ValueError, match=r"ImageNet images not found: .*imagenet/train is not a "
                                         r"directory\. Extract ImageNet as"):
        sources.get_source("living17", split="train", data_dir=data_dir)
    (tmp_path / breeds.IMAGENET_DIR / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"ImageNet class n00000 not found: .*Extract all 1000"):
        sources.get_source("living17", split="train", data_dir=data_dir)


@pytest.mark.parametrize("count", [0, 1, 3, 49, 50, 51, 120])
def test_held_out_validation_records_are_disjoint_from_training(count):
    """Every 50th training record (the last, for a split of fewer) is validation, never trained
    on; together they are the whole split."""
    kept, held = (tasks.HeldOut(list(range(count)), 50, held_out=h) for h in (False, True))
    kept, held = [kept[i] for i in range(len(kept))], [held[i] for i in range(len(held))]
    assert sorted(kept + held) == list(range(count)) and not set(kept) & set(held)
    assert held == ([i for i in range(count) if i % 50 == 49] or list(range(count))[1:][-1:])


def test_real_task_validation_set_is_held_out_of_its_training_split(tfds_dir):
    records = [{"image": png_bytes(), "label": np.int64(i % 2)} for i in range(120)]
    data = recipes.real_data("cifar10_stl", data_dir=tfds_dir, image_size=8, worker_count=0)
    with mocked_tfds(tfds_dir, records):
        task = tasks.build(data, seed=0)
    assert task.val_set.kind == tasks.VAL and task.val_set.name == "cifar10"
    assert (len(task.train_source), len(task.val_set.source)) == (118, 2)
