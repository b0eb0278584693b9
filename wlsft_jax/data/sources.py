"""Real datasets by name: `get_source(name, split=...) -> (grain source, SourceInfo)`.

TFDS datasets are read with `tfds` as ArrayRecord random-access sources (prepared once with
`tfds build ... --file_format=array_record`, see launch/prepare_data.md); images stay encoded
until the pipeline decodes them. ObjectNet, WILDS and BREEDS are read from their own folders
(objectnet.py, wilds.py, breeds.py). Nothing is downloaded here.

`data_dir` (or $TFDS_DATA_DIR) is one folder, local or gs://, holding the TFDS datasets
(`<data_dir>/<name>/<version>/`) and the folder datasets (`<data_dir>/objectnet-1.0/`, ...).
"""
import dataclasses
import functools
import inspect
import os
from typing import Any

import grain.python as grain
import numpy as np
import tensorflow_datasets as tfds

from wlsft_jax.data import breeds, imagenet_classes, label_spaces, objectnet, wilds
# Shared label spaces: the 9 classes CIFAR-10 and STL-10 share; LP-FT's 40 DomainNet classes.
from wlsft_jax.data.label_spaces import CIFAR_STL, DOMAINNET40
from wlsft_jax.data.source_base import CAPTIONS, CLASSIFICATION, SourceInfo, check_split

DATA_DIR_ENV = "TFDS_DATA_DIR"
# LP-FT's DomainNet shift: fine-tune on sketches, evaluate on the other domains, in the 40
# classes of label space DOMAINNET40.
DOMAINNET_ID_DOMAIN = "sketch"
DOMAINNET_OOD_DOMAINS = ("real", "painting", "clipart")
# Each COCO image has at least 5 captions; record i is caption i % 5 of image i // 5.
COCO_CAPTIONS_PER_IMAGE = 5


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """How a TFDS dataset maps onto our records.

    class_names: None takes TFDS's class names (DomainNet's), "_" read as " ".
    label_subset: ImageNet ids of the dataset's classes, when its TFDS labels are ImageNet ids
      but it holds only those classes (ImageNet-R / -A): labels become positions in the subset.
    label_spaces: the shared label spaces (`label_spaces.SHARED_LABEL_SPACES`) the dataset can
      also be read in; records of classes outside it are dropped.
    """
    kind: str = CLASSIFICATION
    class_names: tuple[str, ...] | None = None
    label_subset: tuple[int, ...] | None = None
    label_spaces: tuple[str, ...] = ()
    needs_config: bool = False
    build_command: str = "tfds build {name} --data_dir={data_dir} --file_format=array_record"


_IMAGENET_BUILD = ("put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in MANUAL_DIR and run "
                   "`tfds build imagenet2012 --data_dir={data_dir} --manual_dir=MANUAL_DIR "
                   "--file_format=array_record`")
TFDS_DATASETS = {
    "imagenet2012": TfdsDataset(class_names=imagenet_classes.IMAGENET_CLASSES,
                                build_command=_IMAGENET_BUILD),
    "imagenet_v2": TfdsDataset(class_names=imagenet_classes.IMAGENET_CLASSES),
    "imagenet_r": TfdsDataset(class_names=imagenet_classes.IMAGENET_CLASSES,
                              label_subset=imagenet_classes.IMAGENET_R_CLASS_IDS),
    "imagenet_a": TfdsDataset(class_names=imagenet_classes.IMAGENET_CLASSES,
                              label_subset=imagenet_classes.IMAGENET_A_CLASS_IDS),
    "imagenet_sketch": TfdsDataset(class_names=imagenet_classes.IMAGENET_CLASSES),
    "cifar10": TfdsDataset(class_names=label_spaces.CIFAR10_CLASSES, label_spaces=(CIFAR_STL,)),
    "cifar10_1": TfdsDataset(class_names=label_spaces.CIFAR10_CLASSES, label_spaces=(CIFAR_STL,)),
    "stl10": TfdsDataset(class_names=label_spaces.STL10_CLASSES, label_spaces=(CIFAR_STL,)),
    "domainnet": TfdsDataset(needs_config=True, label_spaces=(DOMAINNET40,)),
    "coco_captions": TfdsDataset(kind=CAPTIONS),
}


class TfdsSource(grain.RandomAccessDataSource):
    """A TFDS random-access source with labels mapped into our label space.

    label_map[tfds_label] is our label (-1: not in the label space); record_keys are the TFDS
    records kept (all when None). The repr names dataset, split and label space only.
    """

    def __init__(self, data_source, *, name: str, split: str, label_space: str | None,
                 label_map: np.ndarray, record_keys: np.ndarray | None = None):
        self._data_source = data_source
        self._name, self._split, self._label_space = name, split, label_space
        self._label_map = np.asarray(label_map, dtype=np.int32)
        self._record_keys = record_keys

    def __len__(self) -> int:
        return len(self._data_source if self._record_keys is None else self._record_keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = index if self._record_keys is None else int(self._record_keys[index])
        record = self._data_source[key]
        tfds_label = int(record["label"])
        label = self._label_map[tfds_label] if 0 <= tfds_label < len(self._label_map) else -1
        if label < 0:
            raise ValueError(f"{self._name}/{self._split} record {key} has TFDS label "
                             f"{tfds_label}, outside the dataset's label space; is the dataset "
                             f"built from the expected release?")
        return {"image": record["image"], "label": np.int32(label)}

    def __repr__(self) -> str:
        return (f"TfdsSource(name={self._name!r}, split={self._split!r}, "
                f"label_space={self._label_space!r}, records={len(self)})")


class TfdsCaptionSource(grain.RandomAccessDataSource):
    """Image-caption pairs: record i is caption i % k of image i // k (k captions per image)."""

    def __init__(self, data_source, *, name: str, split: str, captions_per_image: int):
        self._data_source = data_source
        self._name, self._split = name, split
        self._captions_per_image = captions_per_image

    def __len__(self) -> int:
        return len(self._data_source) * self._captions_per_image

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, caption_index = divmod(index, self._captions_per_image)
        record = self._data_source[image_index]
        captions = record["captions"]["text"]
        if len(captions) <= caption_index:
            raise ValueError(f"{self._name}/{self._split} image {image_index} has "
                             f"{len(captions)} captions, fewer than the {self._captions_per_image} "
                             f"per image this source reads.")
        caption = captions[caption_index]
        caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        return {"image": record["image"], "caption": caption}

    def __repr__(self) -> str:
        return (f"TfdsCaptionSource(name={self._name!r}, split={self._split!r}, "
                f"captions_per_image={self._captions_per_image}, records={len(self)})")


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, else $TFDS_DATA_DIR, else a ValueError saying to give one."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise ValueError(f"No dataset directory: pass data_dir (config data.data_dir) or set "
                         f"${DATA_DIR_ENV} to the folder holding the prepared datasets "
                         f"(local or gs://; see launch/prepare_data.md).")
    return data_dir


def _tfds_builder(name: str, dataset: TfdsDataset, data_dir: str):
    """The prepared ArrayRecord TFDS builder of `name`, or a ValueError saying how to build it."""
    base_name, _, config = name.partition("/")
    hint = dataset.build_command.format(name=name, data_dir=data_dir)
    configs = list(tfds.builder_cls(base_name).builder_configs)
    if config and config not in configs or dataset.needs_config and not config:
        raise ValueError(f"{name!r}: pick one of {base_name}'s configs: "
                         f"{[f'{base_name}/{c}' for c in configs]}.")
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise ValueError(f"{name} is not prepared under {data_dir} (looked for "
                         f"{builder.data_path}); build it once: {hint}.")
    file_format = builder.info.file_format
    if file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(f"{name} under {data_dir} is stored as {file_format}, but random "
                         f"access needs ArrayRecord; rebuild it: {hint}.")
    return builder


def tfds_source(name: str, *, split: str, data_dir: str | None = None,
                label_space: str | None = None) -> tuple[grain.RandomAccessDataSource,
                                                         SourceInfo]:
    """A prepared TFDS dataset ("name" or "name/config", e.g. "domainnet/real") as records."""
    base_name = name.partition("/")[0]
    dataset = TFDS_DATASETS[base_name]
    if label_space is not None and label_space not in dataset.label_spaces:
        raise ValueError(f"{name} has no label space {label_space!r}; valid: "
                         f"{[None, *dataset.label_spaces]}.")
    data_dir = resolve_data_dir(data_dir)
    builder = _tfds_builder(name, dataset, data_dir)
    check_split(name, split.partition("[")[0], list(builder.info.splits))
    data_source = builder.as_data_source(split=split,
                                         decoders={"image": tfds.decode.SkipDecoding()})
    if dataset.kind == CAPTIONS:
        source = TfdsCaptionSource(data_source, name=name, split=split,
                                   captions_per_image=COCO_CAPTIONS_PER_IMAGE)
        return source, SourceInfo(name=name, split=split, kind=CAPTIONS, num_records=len(source))

    class_names = dataset.class_names or tuple(
        label.replace("_", " ") for label in builder.info.features["label"].names)
    label_map = np.arange(len(class_names), dtype=np.int32)
    record_keys = None
    if dataset.label_subset is not None:
        label_map = np.full(len(class_names), -1, dtype=np.int32)
        label_map[list(dataset.label_subset)] = np.arange(len(dataset.label_subset))
        class_names = tuple(class_names[i] for i in dataset.label_subset)
    if label_space is not None:
        label_map = label_spaces.shared_label_map(label_space, class_names)
        class_names = label_spaces.SHARED_LABEL_SPACES[label_space].classes
        tfds_labels = np.asarray([int(data_source[key]["label"])
                                  for key in range(len(data_source))])
        record_keys = np.flatnonzero(label_map[tfds_labels] >= 0)
    source = TfdsSource(data_source, name=name, split=split, label_space=label_space,
                        label_map=label_map, record_keys=record_keys)
    info = SourceInfo(name=name, split=split, kind=CLASSIFICATION, num_records=len(source),
                      class_names=class_names, label_subset=dataset.label_subset)
    return source, info


# Datasets read from their own folders: name -> (source function, its fixed keywords).
FOLDER_DATASETS = {
    "objectnet": (objectnet.objectnet_source, {}),
    "iwildcam": (wilds.iwildcam_source, {}),
    "fmow": (wilds.fmow_source, {}),
    "living17": (breeds.breeds_source, {"hierarchy": "living17"}),
    "entity30": (breeds.breeds_source, {"hierarchy": "entity30"}),
}


def source_names() -> tuple[str, ...]:
    """Every name `get_source` accepts (TFDS names also take "/config")."""
    return (*TFDS_DATASETS, *FOLDER_DATASETS)


def get_source(name: str, *, split: str, data_dir: str | None = None,
               **options) -> tuple[grain.RandomAccessDataSource, SourceInfo]:
    """The records of one split of a real dataset and its SourceInfo.

    name: one of `source_names()`; TFDS datasets may name a config ("domainnet/real",
      "imagenet_v2/topimages", "cifar10_1/v6").
    data_dir: folder holding the prepared datasets (default: $TFDS_DATA_DIR).
    options: dataset-specific keywords, e.g. label_space="cifar_stl" for CIFAR-10 / STL-10 or
      "domainnet40" for DomainNet; an unknown one is a ValueError listing the valid ones.
    """
    if name.partition("/")[0] in TFDS_DATASETS:
        build, fixed = functools.partial(tfds_source, name), {}
    elif name in FOLDER_DATASETS:
        build, fixed = FOLDER_DATASETS[name]
    else:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {list(source_names())}.")
    valid_options = [parameter for parameter in inspect.signature(build).parameters
                     if parameter not in ("name", "split", "data_dir", *fixed)]
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        raise ValueError(f"{name} takes no options {unknown}; valid options: {valid_options}.")
    return build(split=split, data_dir=resolve_data_dir(data_dir), **fixed, **options)
