"""Image–caption pairs for weak language supervision: ImageNet-20K, CC-20K and COCO-10K.

`caption_source(name, path=...)` lists a dataset's pairs, chooses `num_pairs` of them in an order
set by `seed`, decodes each chosen image once to leave out missing or corrupt ones, and returns a
grain random-access source of {"image": encoded bytes, "caption": str} records (decode them with
`transforms.DecodeImage`, tokenize with `transforms.Tokenize`). This module names the datasets,
finds the format behind a `path` and chooses the pairs; `caption_formats` reads each format.

Where the pairs come from (`path`):
  imagenet_20k  an ImageNet folder, `<path>/train/<wnid>/*.JPEG`, each image captioned with its
                class name (CLIP's spelling) in a prompt template chosen by a hash of the image;
                or a captions file.
  cc_20k        a captions file; or WebDataset tar shards (a folder of *.tar, or one .tar) whose
                samples are `<key>.jpg|jpeg|png|webp` + `<key>.txt` members. The shards are
                indexed once (member offsets), and each image is read at its offset.
  coco_10k      COCO's caption annotations (`captions_train2017.json`; images in the sibling
                folder `train2017/`, or `images_dir`); or a TFDS data dir holding the prepared
                `coco_captions`. One caption per image, chosen by a hash of the image, unless
                all_captions=True.
A captions file is TSV (`image_path<TAB>caption` lines, optionally under the header line
`image_path<TAB>caption`) or JSONL (`{"image_path": ..., "caption": ...}` lines); relative image
paths are relative to the file's folder.

The choice: every pair has a key that names it the same way on every machine (its image path
relative to the dataset, its tar shard and sample, its TFDS index); pairs are ordered by a hash of
(seed, key) and the first `num_pairs` whose image decodes are taken. So the same seed picks the
same pairs on every machine and numpy version, whatever order the files are listed in, and a
smaller subset is part of a larger one.

Bad images are found when the source is built, not in the pipeline: each chosen image is read
and decoded once, in threads (PIL decodes without holding the GIL), about 2.5 ms per
ImageNet-sized JPEG on one core (~50 s for 20K; less with more cores). A missing or corrupt image
is replaced by the next pair in the order and counted in the log (or, with on_bad_image="fail",
raises a ValueError). The source then holds exactly `num_pairs` good pairs, so the pipeline stays
one record in, one record out: nothing filtered per worker, epochs of known length, and every
host of a multi-host run agrees on the same pairs.
"""
import concurrent.futures
import dataclasses
import functools
import inspect
import os
from typing import Any, Callable

import grain.python as grain
import numpy as np
from absl import logging
from etils import epath

from wlsft_jax.data import caption_formats, templates, transforms
from wlsft_jax.data.source_base import CAPTIONS, SourceInfo

BAD_IMAGE_POLICIES = ("skip", "fail")
# Image checks are I/O and PIL decoding, which releases the GIL, so threads overlap them.
CHECK_THREADS = 32
# The record key of a caption's precomputed text features (`WithTextFeatures`).
TEXT_FEATURES_KEY = "text_features"


class WithTextFeatures(grain.RandomAccessDataSource):
    """The records of a caption source, each with `TEXT_FEATURES_KEY`: its caption's features
    from a frozen text encoder, row `index` of `features`, computed once for all epochs (weak
    language supervision never trains its text encoder)."""

    def __init__(self, source: grain.RandomAccessDataSource, features: np.ndarray):
        if len(features) != len(source):
            raise ValueError(f"{len(features)} rows of text features for the {len(source)} "
                             f"records of {source!r}; give one row per record.")
        self._source = source
        self._features = np.asarray(features, np.float32)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self._source[index], TEXT_FEATURES_KEY: self._features[index]}

    def __repr__(self) -> str:  # Resuming checks the source's repr: the pairs name it.
        return f"WithTextFeatures({self._source!r}, dim={self._features.shape[1]})"


IMAGENET_PATHS = ("an ImageNet folder holding train/<wnid>/*.JPEG, or a captions file "
                  "(.tsv / .jsonl)")
CC_PATHS = "a captions file (.tsv / .jsonl), a WebDataset .tar shard, or a folder of .tar shards"
COCO_PATHS = ("COCO's caption annotations (a .json such as annotations/captions_train2017.json), "
              "or a TFDS data dir holding the prepared coco_captions")


def _is_captions_file(path: epath.Path) -> bool:
    return path.is_file() and path.suffix in caption_formats.CAPTIONS_FILE_SUFFIXES


def _unsupported_path(name: str, path: epath.Path, valid_paths: str) -> ValueError:
    state = "does not exist" if not path.exists() else "is not a supported kind of path"
    return ValueError(f"{name}: {path} {state}; give {valid_paths}.")


def imagenet_pairs(path: epath.Path, *, name: str,
                   template_set: str = "openai_imagenet") -> caption_formats.StoredCaptionPairs:
    """ImageNet pairs from an ImageNet folder (captions from the template set `template_set`)
    or a captions file."""
    if _is_captions_file(path):
        return caption_formats.captions_file_pairs(path, name=name)
    if path.is_dir():
        return caption_formats.imagenet_folder_pairs(
            path, name=name, prompt_templates=templates.get_templates(template_set))
    raise _unsupported_path(name, path, IMAGENET_PATHS)


def cc_pairs(path: epath.Path, *, name: str) -> caption_formats.StoredCaptionPairs:
    """Conceptual Captions pairs from a captions file or WebDataset tar shards."""
    if _is_captions_file(path):
        return caption_formats.captions_file_pairs(path, name=name)
    if path.is_file() and path.suffix == ".tar":
        return caption_formats.tar_shard_pairs([path], name=name)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise ValueError(f"{name}: {path} holds no .tar shards; give {CC_PATHS}.")
        return caption_formats.tar_shard_pairs(shards, name=name)
    raise _unsupported_path(name, path, CC_PATHS)


def coco_pairs(path: epath.Path, *, name: str, images_dir: str | os.PathLike | None = None,
               all_captions: bool = False) -> caption_formats.CaptionPairs:
    """COCO pairs from caption annotations or TFDS's coco_captions; one caption per image unless
    all_captions. images_dir defaults to `<annotations>/../<split>`, e.g. train2017/."""
    if path.is_file() and path.suffix == ".json":
        images = epath.Path(images_dir) if images_dir else (
            path.parent.parent / path.stem.removeprefix("captions_"))
        if not images.is_dir():
            raise ValueError(f"{name}: COCO image folder {images} not found; pass images_dir=the "
                             f"folder holding the images that {path.name} names.")
        return caption_formats.coco_json_pairs(path, name=name, images_dir=images,
                                               all_captions=all_captions)
    if path.is_dir():
        return caption_formats.coco_tfds_pairs(path, name=name, all_captions=all_captions)
    raise _unsupported_path(name, path, COCO_PATHS)


@dataclasses.dataclass(frozen=True)
class CaptionDataset:
    """How to list a caption dataset's pairs, how many to take, and what `path` may be."""
    list_pairs: Callable[..., caption_formats.CaptionPairs]
    num_pairs: int
    valid_paths: str


CAPTION_DATASETS = {
    "imagenet_20k": CaptionDataset(imagenet_pairs, 20_000, IMAGENET_PATHS),
    "cc_20k": CaptionDataset(cc_pairs, 20_000, CC_PATHS),
    "coco_10k": CaptionDataset(coco_pairs, 10_000, COCO_PATHS),
}


def _image_problem(pairs: caption_formats.CaptionPairs, index: int) -> str | None:
    """Why pair `index`'s image cannot be read and decoded as the pipeline decodes it, or None."""
    try:
        transforms.DecodeImage().map(pairs[index])
    except Exception as error:  # Corrupt files make PIL raise many kinds of errors.
        return f"{type(error).__name__}: {error}"
    return None


def choose_pairs(pairs: caption_formats.CaptionPairs, *, num_pairs: int, seed: int,
                 on_bad_image: str = "skip") -> caption_formats.CaptionPairs:
    """The first `num_pairs` pairs, in the order of a hash of (seed, key), whose image decodes.

    A missing or corrupt image is replaced by the next pair in that order and counted in the log
    (on_bad_image="skip"), or raises a ValueError naming it (on_bad_image="fail").
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image={on_bad_image!r}; valid: {list(BAD_IMAGE_POLICIES)}.")
    if not isinstance(num_pairs, int) or not 1 <= num_pairs <= len(pairs):
        raise ValueError(f"{pairs.name} lists {len(pairs)} pairs; num_pairs={num_pairs!r} must "
                         f"be an int in 1..{len(pairs)}.")
    order = np.argsort(np.array([caption_formats.stable_hash(f"{seed}:{key}")
                                 for key in pairs.keys], dtype=np.uint64), kind="stable")
    chosen, skipped, checked = [], [], 0
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as executor:
        while len(chosen) < num_pairs and checked < len(order):
            candidates = order[checked:checked + num_pairs - len(chosen)]
            checked += len(candidates)
            problems = executor.map(functools.partial(_image_problem, pairs), candidates)
            for index, problem in zip(candidates, problems):
                if problem is None:
                    chosen.append(index)
                else:
                    skipped.append(f"{pairs.keys[index]} ({problem})")
            if skipped and on_bad_image == "fail":
                raise ValueError(f"{pairs.name}: {len(skipped)} images are missing or corrupt, "
                                 f"e.g. {skipped[:caption_formats.EXAMPLES_IN_MESSAGES]}; pass "
                                 f"on_bad_image='skip' to replace them with other pairs.")
    if skipped:
        logging.warning("%s: skipped %d pairs whose image is missing or corrupt (replaced by the "
                        "next pairs of seed %d's order), e.g. %s.", pairs.name, len(skipped), seed,
                        skipped[:caption_formats.EXAMPLES_IN_MESSAGES])
    if len(chosen) < num_pairs:
        raise ValueError(f"{pairs.name}: only {len(chosen)} of its {len(pairs)} pairs have a "
                         f"readable image; num_pairs={num_pairs} must be at most {len(chosen)}.")
    logging.info("%s: chose %d of %d pairs (seed %d); checked %d images, skipped %d.",
                 pairs.name, num_pairs, len(pairs), seed, checked, len(skipped))
    return pairs.take(np.sort(np.asarray(chosen)))


def caption_source(name: str, *, path: str | os.PathLike | None, num_pairs: int | None = None,
                   seed: int = 0, on_bad_image: str = "skip",
                   **options) -> tuple[caption_formats.CaptionPairs, SourceInfo]:
    """`num_pairs` image–caption pairs of a caption dataset, and their SourceInfo.

    name: one of CAPTION_DATASETS (imagenet_20k, cc_20k, coco_10k).
    path: where the dataset is (local or gs://); each dataset's `valid_paths` says what it takes.
    num_pairs: how many pairs (default: the number in the dataset's name).
    seed: which pairs; the same seed gives the same pairs everywhere.
    on_bad_image: "skip" (replace a missing or corrupt image, and log the count) or "fail".
    options: imagenet_20k: template_set (a template set of templates.py, for folder
      captions); coco_10k: images_dir, all_captions.
    """
    if name not in CAPTION_DATASETS:
        raise ValueError(f"Unknown caption dataset {name!r}; valid names: "
                         f"{list(CAPTION_DATASETS)}.")
    dataset = CAPTION_DATASETS[name]
    if not path:
        raise ValueError(f"{name} needs path: {dataset.valid_paths}.")
    valid_options = [parameter for parameter in inspect.signature(dataset.list_pairs).parameters
                     if parameter not in ("path", "name")]
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        raise ValueError(f"{name} takes no options {unknown}; valid options: {valid_options}.")
    pairs = dataset.list_pairs(epath.Path(path), name=name, **options)
    chosen = choose_pairs(pairs, num_pairs=dataset.num_pairs if num_pairs is None else num_pairs,
                          seed=seed, on_bad_image=on_bad_image)
    return chosen, SourceInfo(name=name, split="train", kind=CAPTIONS, num_records=len(chosen))
