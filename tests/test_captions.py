"""Caption sources: captions files, WebDataset tar shards, ImageNet folders, COCO annotations and
TFDS coco_captions, all written here with tiny PIL images; seeded subsets, bad images, and batches
through the training pipeline."""
import json
import logging
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from wlsft_jax.data import caption_formats, captions, pipeline, templates, tokenizer, transforms
from helpers import encoded_image, write_coco, write_tar_shard


def decoded_value(record) -> int:
    """The grey value of a record's (uniform) image."""
    return int(np.median(transforms.DecodeImage().map(record)["image"]))


def write_captions_file(folder, count: int, suffix: str = ".tsv", header: bool = False):
    """`count` PNGs in folder/images/ and a captions file naming them by relative path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        (folder / "images" / f"{i}.png").write_bytes(encoded_image(7 * i % 256))
        rows.append((f"images/{i}.png", f"caption {i}"))
    file = folder / f"pairs{suffix}"
    if suffix == ".tsv":
        lines = ([caption_formats.TSV_HEADER] if header else []) + [f"{p}\t{c}" for p, c in rows]
    else:
        lines = [json.dumps({"image_path": p, "caption": c}) for p, c in rows]
    file.write_text("\n".join(lines) + "\n")
    return file


def chosen_keys(path, num_pairs, seed, name="cc_20k"):
    source, _ = captions.caption_source(name, path=path, num_pairs=num_pairs, seed=seed)
    return source.keys


@pytest.mark.parametrize("suffix,header", [(".tsv", False), (".tsv", True), (".jsonl", False)])
def test_captions_file_pairs_resolve_relative_and_absolute_paths(tmp_path, suffix, header):
    file = write_captions_file(tmp_path, 4, suffix, header)
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(encoded_image(200, "JPEG"))
    with file.open("a") as lines:
        lines.write(f"{absolute}\tan absolute path\n" if suffix == ".tsv" else
                    json.dumps({"image_path": str(absolute), "caption": "an absolute path"}))
    source, info = captions.caption_source("cc_20k", path=file, num_pairs=5, seed=0)
    assert len(source) == info.num_records == 5 and info.kind == "captions"
    by_caption = {source[i]["caption"]: source[i] for i in range(len(source))}
    assert sorted(by_caption) == sorted([f"caption {i}" for i in range(4)] + ["an absolute path"])
    assert decoded_value(by_caption["caption 3"]) == 21
    assert abs(decoded_value(by_caption["an absolute path"]) - 200) <= 2  # JPEG rounding
    assert isinstance(by_caption["caption 0"]["image"], bytes)


def test_subsets_are_seeded_stable_nested_and_independent_of_listing_order(tmp_path):
    file = write_captions_file(tmp_path, 30)
    first = chosen_keys(file, 10, seed=0)
    assert chosen_keys(file, 10, seed=0) == first
    assert chosen_keys(file, 10, seed=1) != first
    assert set(chosen_keys(file, 4, seed=0)) <= set(first)
    # Pinned: the same seed picks these pairs on every machine and numpy version.
    assert [key.split("\t")[1] for key in chosen_keys(file, 3, seed=0)] == [
        "caption 6", "caption 18", "caption 27"]
    reversed_file = tmp_path / "reversed.tsv"
    reversed_file.write_text("\n".join(reversed(file.read_text().splitlines())))
    assert set(chosen_keys(reversed_file, 10, seed=0)) == set(first)


def test_source_pickles_and_its_repr_names_the_chosen_pairs(tmp_path):
    file = write_captions_file(tmp_path, 12)
    source, _ = captions.caption_source("cc_20k", path=file, num_pairs=6, seed=0)
    restored = pickle.loads(pickle.dumps(source))
    assert repr(restored) == repr(source) and "cc_20k" in repr(source)
    assert restored[2] == source[2]
    other_seed, _ = captions.caption_source("cc_20k", path=file, num_pairs=6, seed=1)
    assert repr(other_seed) != repr(source)
    assert str(tmp_path) not in repr(source)  # no machine-specific root


def test_text_features_ride_along_with_their_records(tmp_path):
    source, _ = captions.caption_source("cc_20k", path=write_captions_file(tmp_path, 4),
                                        num_pairs=4, seed=0)
    features = np.arange(8, dtype=np.float32).reshape(4, 2)
    featured = captions.WithTextFeatures(source, features)
    assert len(featured) == 4 and featured[2]["caption"] == source[2]["caption"]
    np.testing.assert_array_equal(featured[2][captions.TEXT_FEATURES_KEY], [4, 5])
    restored = pickle.loads(pickle.dumps(featured))  # As grain's worker processes get it.
    assert repr(restored) == repr(featured) and repr(source) in repr(featured)
    np.testing.assert_array_equal(restored[3][captions.TEXT_FEATURES_KEY], [6, 7])
    with pytest.raises(ValueError, match="3 rows of text features for the 4 records"):
        captions.WithTextFeatures(source, features[:3])


def test_tar_shards_are_indexed_and_read_by_member_offset(tmp_path, caplog):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar_shard(shards / "000000.tar", [
        ("a.jpg", encoded_image(40, "JPEG")), ("a.txt", b"a jpeg \n"),
        ("b.png", encoded_image(80)), ("b.txt", "caf\u00e9".encode()),
        ("lonely.jpg", encoded_image(1, "JPEG"))])
    write_tar_shard(shards / "000001.tar", [
        ("sub/c.txt", b"caption first"), ("sub/c.json", b"{}"), ("sub/c.PNG", encoded_image(120)),
        ("d.txt", b"no image")])
    with caplog.at_level(logging.WARNING):
        source, _ = captions.caption_source("cc_20k", path=shards, num_pairs=3, seed=0)
    assert "left out 2 tar samples" in caplog.text
    assert sorted(source.keys) == ["000000.tar/a", "000000.tar/b", "000001.tar/sub/c"]
    records = {key: source[i] for i, key in enumerate(source.keys)}
    assert records["000000.tar/b"]["caption"] == "caf\u00e9"
    assert records["000000.tar/a"]["caption"] == "a jpeg"
    assert records["000000.tar/b"]["image"] == encoded_image(80)
    assert decoded_value(records["000001.tar/sub/c"]) == 120

    single, _ = captions.caption_source("cc_20k", path=shards / "000001.tar", num_pairs=1,
                                        seed=0)
    assert single.keys == ("000001.tar/sub/c",)
    with tarfile.open(tmp_path / "packed.tar.gz", "w:gz"):
        pass
    (tmp_path / "gz").mkdir()
    (tmp_path / "packed.tar.gz").rename(tmp_path / "gz" / "packed.tar")
    with pytest.raises(ValueError, match="not an uncompressed tar shard"):
        captions.caption_source("cc_20k", path=tmp_path / "gz", num_pairs=1, seed=0)


def test_imagenet_folder_captions_are_class_names_in_templates(tmp_path):
    for wnid, value in (("n01440764", 50), ("n01443537", 150)):  # tench, goldfish
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(
                encoded_image(value, "JPEG"))
    source, _ = captions.caption_source("imagenet_20k", path=tmp_path, num_pairs=6, seed=0)
    prompts = {name: {t.format(name) for t in templates.OPENAI_IMAGENET_TEMPLATES}
               for name in ("tench", "goldfish")}
    for i, key in enumerate(source.keys):
        record = source[i]
        name = "tench" if key.startswith("n01440764/") else "goldfish"
        assert record["caption"] in prompts[name]
        assert abs(decoded_value(record) - (50 if name == "tench" else 150)) <= 2
    again, _ = captions.caption_source("imagenet_20k", path=tmp_path, num_pairs=6, seed=3)
    assert {again[i]["caption"] for i in range(6)} == {source[i]["caption"] for i in range(6)}
    simple, _ = captions.caption_source("imagenet_20k", path=tmp_path, num_pairs=2, seed=0,
                                        template_set="simple")
    assert {simple[i]["caption"] for i in range(2)} <= {"a photo of a tench.",
                                                        "a photo of a goldfish."}
    assert len(caption_formats.imagenet_wnids()) == 1000

    (tmp_path / "train" / "cats").mkdir()
    with pytest.raises(ValueError, match=r"\['cats'\] that are not ImageNet-1k WordNet ids"):
        captions.caption_source("imagenet_20k", path=tmp_path, num_pairs=1, seed=0)
    with pytest.raises(ValueError, match="has no train/ folder"):
        captions.caption_source("imagenet_20k", path=tmp_path / "train", num_pairs=1, seed=0)
    listed = write_captions_file(tmp_path / "listed", 3, ".jsonl")
    from_file, _ = captions.caption_source("imagenet_20k", path=listed, num_pairs=3, seed=0)
    assert {from_file[i]["caption"] for i in range(3)} == {"caption 0", "caption 1", "caption 2"}


def test_coco_annotations_give_one_caption_per_image_or_all(tmp_path):
    file = write_coco(tmp_path)
    source, _ = captions.caption_source("coco_10k", path=file, num_pairs=3, seed=0)
    image_ids = sorted(int(source[i]["caption"].split()[1]) for i in range(3))
    assert image_ids == [7, 8, 9]
    for i in range(3):
        image_id = int(source[i]["caption"].split()[1])
        assert abs(decoded_value(source[i]) - 20 * image_id) <= 2
    again, _ = captions.caption_source("coco_10k", path=file, num_pairs=3, seed=1)
    assert sorted(again.keys) == sorted(source.keys)  # the caption of an image is seed-independent
    every, _ = captions.caption_source("coco_10k", path=file, num_pairs=6, seed=0,
                                       all_captions=True)
    assert sorted(every[i]["caption"] for i in range(6)) == sorted(
        f"image {i} caption {c}" for i, n in zip((7, 8, 9), (3, 2, 1)) for c in range(n))
    with pytest.raises(ValueError, match="pass images_dir"):
        captions.caption_source("coco_10k", path=file, num_pairs=1, seed=0,
                                images_dir=tmp_path / "nowhere")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}]}))
    with pytest.raises(ValueError, match="is not COCO caption annotations"):
        captions.caption_source("coco_10k", path=broken, num_pairs=1, seed=0,
                                images_dir=tmp_path / "train2017")


def test_coco_from_tfds_takes_one_of_the_five_captions_per_image(tmp_path):
    builder = tfds.builder("coco_captions", data_dir=tmp_path, file_format="array_record")
    builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name="train", shard_lengths=[4], num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name=builder.name, split="train",
            filetype_suffix="array_record"))]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    records = [{"image": encoded_image(30 * i), "captions": {
        "id": np.arange(5), "text": np.asarray([f"image {i} caption {c}".encode()
                                                for c in range(5)], dtype=object)}}
               for i in range(4)]
    with tfds.testing.mock_data(data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES,
                                as_data_source_fn=lambda builder, split, **kwargs: records):
        source, _ = captions.caption_source("coco_10k", path=tmp_path, num_pairs=4, seed=0)
        every, _ = captions.caption_source("coco_10k", path=tmp_path, num_pairs=20, seed=0,
                                           all_captions=True)
    images = sorted(int(source[i]["caption"].split()[1]) for i in range(4))
    assert images == [0, 1, 2, 3]
    assert all(decoded_value(source[i]) == 30 * int(source[i]["caption"].split()[1])
               for i in range(4))
    assert len({every[i]["caption"] for i in range(20)}) == 20
    assert "TfdsCaptionPairs(name='coco_10k', pairs=4" in repr(pickle.loads(pickle.dumps(source)))


def write_with_bad_images(folder):
    """A TSV of 6 good pairs and 3 bad ones: missing file, truncated JPEG, text named .jpg."""
    file = write_captions_file(folder, 6)
    (folder / "truncated.jpg").write_bytes(encoded_image(9, "JPEG", size=(64, 64))[:200])
    (folder / "text.jpg").write_text("<html>not found</html>")
    with file.open("a") as lines:
        lines.write("missing.jpg\tno file\ntruncated.jpg\tcut short\ntext.jpg\tan error page\n")
    return file


def test_bad_images_are_replaced_and_counted_or_fatal(tmp_path, caplog):
    file = write_with_bad_images(tmp_path)
    with caplog.at_level(logging.WARNING):
        source, _ = captions.caption_source("cc_20k", path=file, num_pairs=6, seed=0)
    assert "skipped 3 pairs whose image is missing or corrupt" in caplog.text
    assert "FileNotFoundError" in caplog.text and "truncated" in caplog.text
    assert sorted(source[i]["caption"] for i in range(6)) == [f"caption {i}" for i in range(6)]
    with pytest.raises(ValueError, match=r"missing or corrupt.*on_bad_image='skip'"):
        captions.caption_source("cc_20k", path=file, num_pairs=9, seed=0, on_bad_image="fail")
    with pytest.raises(ValueError, match=r"only 6 of its 9 pairs have a readable image"):
        captions.caption_source("cc_20k", path=file, num_pairs=7, seed=0)


def test_train_loader_batches_decoded_tokenized_pairs_and_resumes_only_on_them(tmp_path):
    file = write_captions_file(tmp_path, 10)
    source, info = captions.caption_source("cc_20k", path=file, num_pairs=8, seed=0)
    text_tokenizer = tokenizer.world_tokenizer([f"caption {i}" for i in range(10)],
                                               context_length=8)
    operations = [*info.decode_operations, transforms.ResizeCenterCrop(16),
                  transforms.Normalize.named("clip"), transforms.Tokenize(text_tokenizer),
                  transforms.SelectKeys(("image", "tokens"))]
    loader = pipeline.train_loader(source, global_batch_size=4, operations=operations, seed=0,
                                   shard_index=0, shard_count=1)
    iterator = iter(loader)
    batch = next(iterator)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["tokens"].shape == (4, 8) and batch["tokens"].dtype == np.int32
    assert (batch["tokens"].max(axis=1) == text_tokenizer.eot_id).all()
    state = iterator.get_state()
    other, _ = captions.caption_source("cc_20k", path=file, num_pairs=8, seed=1)
    other_iterator = iter(pipeline.train_loader(other, global_batch_size=4, operations=operations,
                                                seed=0, shard_index=0, shard_count=1))
    with pytest.raises(ValueError, match="data source"):
        other_iterator.set_state(state)


def test_bad_arguments_name_the_valid_choices(tmp_path):
    file = write_captions_file(tmp_path, 3)
    with pytest.raises(ValueError, match=r"valid names: \['imagenet_20k', 'cc_20k', 'coco_10k'\]"):
        captions.caption_source("laion", path=file)
    with pytest.raises(ValueError, match=r"cc_20k needs path: a captions file"):
        captions.caption_source("cc_20k", path=None)
    with pytest.raises(ValueError, match=r"does not exist; give COCO's caption annotations"):
        captions.caption_source("coco_10k", path=tmp_path / "nothing.json")
    with pytest.raises(ValueError, match=r"valid options: \['images_dir', 'all_captions'\]"):
        captions.caption_source("coco_10k", path=file, captions_per_image=5)
    with pytest.raises(ValueError, match=r"num_pairs=4 must be an int in 1\.\.3"):
        captions.caption_source("cc_20k", path=file, num_pairs=4)
    with pytest.raises(ValueError, match=r"lists 3 pairs; num_pairs=20000"):
        captions.caption_source("cc_20k", path=file)  # the default: the 20K of its name
    with pytest.raises(ValueError, match=r"valid: \['skip', 'fail'\]"):
        captions.caption_source("cc_20k", path=file, num_pairs=1, on_bad_image="ignore")
    with pytest.raises(ValueError, match="Unknown template set 'fancy'"):
        captions.caption_source("imagenet_20k", path=tmp_path, num_pairs=1, template_set="fancy")
    bad_line = tmp_path / "bad.tsv"
    bad_line.write_text("images/0.png\tfine\nno tab here\n")
    with pytest.raises(ValueError, match=r"line 2 is not image_path<TAB>caption"):
        captions.caption_source("cc_20k", path=bad_line, num_pairs=1)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"path": "images/0.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match=r"line 1 is not \{\"image_path\": str"):
        captions.caption_source("cc_20k", path=bad_json, num_pairs=1)
    csv = tmp_path / "pairs.csv"
    csv.write_text("x")
    with pytest.raises(ValueError, match="is not a supported kind of path"):
        captions.caption_source("cc_20k", path=csv, num_pairs=1)
