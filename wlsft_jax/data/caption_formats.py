"""Readers of the storage formats of image–caption pairs, each listing a `CaptionPairs` source.

Captions files (TSV / JSONL), WebDataset tar shards, ImageNet folders, COCO caption annotations
and TFDS's prepared coco_captions; every pair gets a key that names it the same way on every
machine. Kept apart from `captions`, which names the datasets, finds the format behind a `path`
(its docstring describes the formats) and chooses the pairs.
"""
import abc
import functools
import hashlib
import json
import os
import posixpath
import tarfile
from typing import Any, Sequence

import grain.python as grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from wlsft_jax.data import imagenet_classes, sources

CAPTIONS_FILE_SUFFIXES = (".tsv", ".jsonl")
PATH_FIELD, CAPTION_FIELD = "image_path", "caption"
TSV_HEADER = f"{PATH_FIELD}\t{CAPTION_FIELD}"
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_CAPTION_EXTENSION = "txt"
IMAGENET_TRAIN_DIR = "train"
# TFDS's imagenet2012 class list: the 1000 WordNet ids in label order (sorted).
IMAGENET_WNIDS_FILE = "datasets/imagenet2012/labels.txt"
# A byte range of this size is its whole file (plain image files).
WHOLE_FILE = -1
EXAMPLES_IN_MESSAGES = 5


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text`, the same on every machine and run (unlike Python's hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(),
                          "little")


class CaptionPairs(grain.RandomAccessDataSource, abc.ABC):
    """Image–caption pairs, records {"image": encoded bytes, "caption": str}, each with a key.

    A key names its pair the same way on every machine. The repr names the dataset, the number
    of pairs and a digest of their keys, so grain refuses to resume a run on other pairs.
    """

    def __init__(self, *, name: str, keys: Sequence[str]):
        self.name = name
        self.keys = tuple(keys)

    def __len__(self) -> int:
        return len(self.keys)

    @abc.abstractmethod
    def take(self, indices: np.ndarray) -> "CaptionPairs":
        """The pairs at `indices`, as a source holding only what they need."""

    @functools.cached_property
    def _keys_digest(self) -> str:
        return hashlib.blake2b("\n".join(self.keys).encode("utf-8"), digest_size=8).hexdigest()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, pairs={len(self)}, "
                f"keys_digest={self._keys_digest!r})")


class StoredCaptionPairs(CaptionPairs):
    """Pairs whose images are byte ranges of files: whole image files, or tar-shard members.

    Row i of `byte_ranges` is (file id, offset, size): pair i's image is `size` bytes at `offset`
    of files[file id], or the whole file when size is WHOLE_FILE.
    """

    def __init__(self, *, name: str, keys: Sequence[str], captions: Sequence[str],
                 files: Sequence[str], byte_ranges: np.ndarray):
        super().__init__(name=name, keys=keys)
        self._captions = tuple(captions)
        self._files = tuple(str(file) for file in files)
        self._byte_ranges = np.asarray(byte_ranges, dtype=np.int64).reshape(-1, 3)
        if not len(self._captions) == len(self._byte_ranges) == len(self.keys):
            raise ValueError(f"{name}: {len(self.keys)} keys, {len(self._captions)} captions and "
                             f"{len(self._byte_ranges)} image byte ranges; give one per pair.")

    def __getitem__(self, index: int) -> dict[str, Any]:
        file_id, offset, size = (int(value) for value in self._byte_ranges[index])
        path = epath.Path(self._files[file_id])
        if size == WHOLE_FILE:
            image = path.read_bytes()
        else:
            with path.open("rb") as file:
                file.seek(offset)
                image = file.read(size)
        return {"image": image, "caption": self._captions[index]}

    def take(self, indices: np.ndarray) -> "StoredCaptionPairs":
        byte_ranges = self._byte_ranges[indices]
        used_files, byte_ranges[:, 0] = np.unique(byte_ranges[:, 0], return_inverse=True)
        return StoredCaptionPairs(name=self.name, keys=[self.keys[i] for i in indices],
                                  captions=[self._captions[i] for i in indices],
                                  files=[self._files[i] for i in used_files],
                                  byte_ranges=byte_ranges)


class TfdsCaptionPairs(CaptionPairs):
    """Pairs of a TFDS caption source: pair i is record pair_indices[i] of `records`, keyed by
    that index."""

    def __init__(self, records: sources.TfdsCaptionSource, pair_indices: Sequence[int], *,
                 name: str):
        self._records = records
        self._pair_indices = np.asarray(pair_indices, dtype=np.int64)
        super().__init__(name=name, keys=[str(index) for index in self._pair_indices])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[int(self._pair_indices[index])]

    def take(self, indices: np.ndarray) -> "TfdsCaptionPairs":
        return TfdsCaptionPairs(self._records, self._pair_indices[indices], name=self.name)


def _whole_files(count: int) -> np.ndarray:
    """Byte ranges reading files 0..count-1 whole."""
    return np.stack([np.arange(count), np.zeros(count, np.int64),
                     np.full(count, WHOLE_FILE)], axis=1)


def _captions_file_rows(file: epath.Path) -> list[tuple[str, str]]:
    """(image path as written, caption) of every line of a TSV or JSONL captions file."""
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip() or (number == 1 and line.strip() == TSV_HEADER):
            continue
        if file.suffix == ".tsv":
            image_path, _, caption = line.partition("\t")
        else:
            try:
                row = json.loads(line)
                image_path, caption = row[PATH_FIELD], row[CAPTION_FIELD]
            except (json.JSONDecodeError, KeyError, TypeError):
                image_path = caption = None
        if not (isinstance(image_path, str) and isinstance(caption, str)
                and image_path and caption.strip()):
            expected = ("image_path<TAB>caption" if file.suffix == ".tsv" else
                        f'{{"{PATH_FIELD}": str, "{CAPTION_FIELD}": str}}')
            raise ValueError(f"{file} line {number} is not {expected} with a non-empty path and "
                             f"caption: {line[:100]!r}.")
        rows.append((image_path, caption.strip()))
    if not rows:
        raise ValueError(f"{file} holds no image-caption pairs.")
    return rows


def captions_file_pairs(file: epath.Path, *, name: str) -> StoredCaptionPairs:
    """The pairs of a TSV / JSONL captions file, keyed by image path (as written) and caption."""
    if file.suffix not in CAPTIONS_FILE_SUFFIXES:
        raise ValueError(f"{file}: a captions file ends in one of {list(CAPTIONS_FILE_SUFFIXES)}.")
    rows = _captions_file_rows(file)
    folder = str(file.parent)
    files = [path if os.path.isabs(path) or "://" in path else posixpath.join(folder, path)
             for path, _ in rows]
    return StoredCaptionPairs(name=name, keys=[f"{path}\t{caption}" for path, caption in rows],
                              captions=[caption for _, caption in rows], files=files,
                              byte_ranges=_whole_files(len(rows)))


def tar_shard_pairs(shards: Sequence[epath.Path], *, name: str) -> StoredCaptionPairs:
    """The pairs of WebDataset tar shards, keyed by shard file name and sample key.

    Reads only member headers and captions; images stay in the shards, located by offset.
    Samples without both an image and a caption are left out, with their count logged.
    """
    keys, captions, byte_ranges, incomplete = [], [], [], []
    for shard_id, shard in enumerate(shards):
        samples: dict[str, dict[str, Any]] = {}
        try:
            with shard.open("rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, base = posixpath.split(member.name)
                    stem, _, extension = base.partition(".")
                    sample = samples.setdefault(posixpath.join(folder, stem), {})
                    extension = extension.lower()
                    if extension == TAR_CAPTION_EXTENSION:
                        text = tar.extractfile(member).read()
                        sample["caption"] = text.decode("utf-8").strip()
                    elif extension in TAR_IMAGE_EXTENSIONS:
                        sample["image"] = (shard_id, member.offset_data, member.size)
        except tarfile.ReadError as error:
            raise ValueError(f"{shard} is not an uncompressed tar shard ({error}); random access "
                             f"needs plain .tar files.") from None
        for sample_key, sample in samples.items():
            key = f"{shard.name}/{sample_key}"
            if sample.get("caption") and "image" in sample:
                keys.append(key)
                captions.append(sample["caption"])
                byte_ranges.append(sample["image"])
            else:
                incomplete.append(key)
    if incomplete:
        logging.warning("%s: left out %d tar samples lacking an image (%s) or a caption (.%s), "
                        "e.g. %s.", name, len(incomplete), "/".join(TAR_IMAGE_EXTENSIONS),
                        TAR_CAPTION_EXTENSION, incomplete[:EXAMPLES_IN_MESSAGES])
    if not keys:
        raise ValueError(f"{name}: the tar shards {[str(s) for s in shards[:3]]} hold no sample "
                         f"with both an image and a caption.")
    return StoredCaptionPairs(name=name, keys=keys, captions=captions,
                              files=[str(shard) for shard in shards], byte_ranges=byte_ranges)


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in label order, as TFDS's imagenet2012 lists them."""
    return tuple(tfds.core.tfds_path(IMAGENET_WNIDS_FILE).read_text().split())


def imagenet_folder_pairs(root: epath.Path, *, name: str,
                          prompt_templates: Sequence[str]) -> StoredCaptionPairs:
    """Every image of `<root>/train/<wnid>/`, captioned with its class name in a template
    chosen by a hash of the image's key ("<wnid>/<file name>")."""
    train_dir = root / IMAGENET_TRAIN_DIR
    if not train_dir.is_dir():
        raise ValueError(f"{name}: {root} has no {IMAGENET_TRAIN_DIR}/ folder; give the ImageNet "
                         f"folder holding {IMAGENET_TRAIN_DIR}/<wnid>/*.JPEG.")
    class_of_wnid = dict(zip(imagenet_wnids(), imagenet_classes.IMAGENET_CLASSES))
    class_dirs = sorted(folder for folder in train_dir.iterdir() if folder.is_dir())
    unknown = [folder.name for folder in class_dirs if folder.name not in class_of_wnid]
    if unknown:
        raise ValueError(f"{name}: {train_dir} has folders {unknown[:EXAMPLES_IN_MESSAGES]} that "
                         f"are not ImageNet-1k WordNet ids (valid: n01440764, ..., n15075141).")
    keys, captions, files = [], [], []
    for class_dir in class_dirs:
        # Names, not Path objects, are sorted and kept: ImageNet has 1.28M files.
        for file_name in sorted(file.name for file in class_dir.iterdir()):
            key = f"{class_dir.name}/{file_name}"
            template = prompt_templates[stable_hash(key) % len(prompt_templates)]
            keys.append(key)
            captions.append(template.format(class_of_wnid[class_dir.name]))
            files.append(f"{class_dir}/{file_name}")
    if not keys:
        raise ValueError(f"{name}: {train_dir} holds no <wnid>/ folder with images.")
    return StoredCaptionPairs(name=name, keys=keys, captions=captions, files=files,
                              byte_ranges=_whole_files(len(keys)))


def coco_json_pairs(annotations_file: epath.Path, *, name: str, images_dir: epath.Path,
                    all_captions: bool) -> StoredCaptionPairs:
    """COCO caption annotations ({"images": [{id, file_name}], "annotations": [{id, image_id,
    caption}]}), keyed "<file name>#<annotation id>"."""
    try:
        annotations = json.loads(annotations_file.read_text())
        file_of_image = {image["id"]: image["file_name"] for image in annotations["images"]}
        captions_of_image: dict[Any, list[tuple[int, str]]] = {}
        for annotation in annotations["annotations"]:
            captions_of_image.setdefault(annotation["image_id"], []).append(
                (annotation["id"], annotation["caption"].strip()))
        unknown = [image for image in captions_of_image if image not in file_of_image]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{annotations_file} is not COCO caption annotations ({{'images': "
                         f"[{{'id', 'file_name'}}], 'annotations': [{{'id', 'image_id', "
                         f"'caption'}}]}}): {type(error).__name__}: {error}.") from None
    if unknown:
        raise ValueError(f"{annotations_file}: captions of image ids {unknown[:5]} that are not "
                         f"in its 'images' list.")
    keys, captions, files = [], [], []
    for image_id in sorted(captions_of_image):
        file_name = file_of_image[image_id]
        image_captions = sorted(captions_of_image[image_id])
        if not all_captions:
            image_captions = [image_captions[stable_hash(file_name) % len(image_captions)]]
        for annotation_id, caption in image_captions:
            keys.append(f"{file_name}#{annotation_id}")
            captions.append(caption)
            files.append(f"{images_dir}/{file_name}")
    if not keys:
        raise ValueError(f"{annotations_file} holds no captions.")
    return StoredCaptionPairs(name=name, keys=keys, captions=captions, files=files,
                              byte_ranges=_whole_files(len(keys)))


def coco_tfds_pairs(data_dir: epath.Path, *, name: str, all_captions: bool) -> TfdsCaptionPairs:
    """The train split of TFDS's prepared coco_captions under `data_dir`."""
    records, _ = sources.get_source("coco_captions", split="train", data_dir=str(data_dir))
    per_image = sources.COCO_CAPTIONS_PER_IMAGE
    if all_captions:
        pair_indices = np.arange(len(records))
    else:
        pair_indices = [image * per_image + stable_hash(str(image)) % per_image
                        for image in range(len(records) // per_image)]
    return TfdsCaptionPairs(records, pair_indices, name=name)
