"""The data of one experiment (a "task"): class names, ID training data, and the ID / OOD eval sets.

`build(config.data, seed=...)` reads `data.source`:
- "world": the embedded world (uint8 images rendered on the fly). ID = `data.id_domain`, OOD =
  each of `data.ood_domains`; pretraining reads the captions of `data.pretrain_domains`.
- "real": datasets by name (`sources.get_source`) from `data.data_dir` or $TFDS_DATA_DIR.
  `data.id_domain` is trained on its train split less a held-out validation slice (every
  `VAL_EVERY`-th record) and evaluated on its held-out split (`SPLITS`),
  each of `data.ood_domains` on its evaluation split; `data.label_space` (e.g. "cifar_stl") reads
  them all in a shared label space. WILDS and BREEDS name their ID and OOD parts
  ("iwildcam/id" / "iwildcam/ood", "living17/source" / "living17/target"). Encoded images go
  through the dataset's decode operations, then a random resized crop (train) or CLIP's
  evaluation view (eval: bicubic resize of the shorter side, central crop) to
  `data.image_size` (a plain decode fused into the crop: `transforms.fuse_decode`). An OOD set
  whose classes are a subset (ImageNet-R / -A) or groups (ObjectNet) of the ID classes is scored
  through a logits transform onto its own classes.
Every task also has an ID validation set (`Task.val_set`, the world's val split or the held-out
training slice): hyperparameters are chosen and training is watched on it, never on a test set.
`data.captions` (imagenet_20k / cc_20k / coco_10k: `data.caption_pairs` pairs, default the number
in its name, read from `data.captions_path`) replaces the caption pairs of weak language
supervision, which are otherwise the world's ID training records.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grain.python as grain
import numpy as np

from wlsft_jax.data import captions, label_spaces, pipeline, sources, transforms, wilds, world

SOURCES = ("world", "real")
ID, OOD, VAL = "id", "ood", "val"
VAL_EVERY = 50  # Real data: every 50th ID training record (2 %) is held out for validation.


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """The splits a real dataset is read from in each role (None: it cannot play that role).

    A name that stands for one part of a dataset ("iwildcam/ood", "living17/target") also says
    which `sources.get_source` dataset it reads and with which options. `metrics` are the
    metrics of every example's prediction (`wilds.METRICS`) recorded besides top-1 / top-5.
    """
    train: str | None  # Trained on, as the ID dataset.
    id_eval: str | None  # Held-out ID evaluation.
    ood_eval: str | None  # Evaluated as an OOD dataset.
    source: str | None = None  # The get_source name (None: the config's name itself).
    options: tuple[tuple[str, str], ...] = ()  # get_source keywords, e.g. a subpopulation.
    metrics: tuple[str, ...] = ()


def _wilds(name: str, metric: str) -> dict[str, DatasetSplits]:
    """WILDS's own scheme: train / id_test in distribution ("<name>/id"), test out of
    distribution ("<name>/ood"), scored by `metric` besides top-1 / top-5."""
    return {f"{name}/id": DatasetSplits("train", "id_test", None, source=name, metrics=(metric,)),
            f"{name}/ood": DatasetSplits(None, None, "test", source=name, metrics=(metric,))}


def _breeds(name: str) -> dict[str, DatasetSplits]:
    """BREEDS as LP-FT reads it: the source subpopulations ("<name>/source") trained on ImageNet
    train and tested on ImageNet val in distribution, the target ones ("<name>/target") OOD."""
    return {f"{name}/source": DatasetSplits("train", "val", None, source=name,
                                            options=(("subpopulation", "source"),)),
            f"{name}/target": DatasetSplits(None, None, "val", source=name,
                                            options=(("subpopulation", "target"),))}


# Keyed by the config's dataset name, or by its base name ("domainnet" for "domainnet/sketch").
SPLITS = {
    "imagenet2012": DatasetSplits("train", "validation", None),
    "imagenet_v2": DatasetSplits(None, None, "test"),
    "imagenet_r": DatasetSplits(None, None, "test"),
    "imagenet_a": DatasetSplits(None, None, "test"),
    "imagenet_sketch": DatasetSplits(None, None, "test"),
    "objectnet": DatasetSplits(None, None, "test"),
    "cifar10": DatasetSplits("train", "test", "test"),
    "cifar10_1": DatasetSplits(None, None, "test"),
    "stl10": DatasetSplits("train", "test", "test"),
    "domainnet": DatasetSplits("train", "test", "test"),
    **_wilds("iwildcam", "macro_f1"),
    **_wilds("fmow", "worst_region_top1"),
    **_breeds("living17"),
    **_breeds("entity30"),
}


def dataset_splits(name: str) -> DatasetSplits | None:
    """The SPLITS entry of a config's dataset name (None: not a supported dataset)."""
    return SPLITS.get(name, SPLITS.get(name.partition("/")[0]))


def eval_metrics(data, name: str) -> tuple[str, ...]:
    """The metrics evaluation records for dataset `name` of `data`: top-1, top-5 and, for
    WILDS, its official metric."""
    splits = dataset_splits(name) if data.source == "real" else None
    return ("top1", "top5", *(splits.metrics if splits else ()))


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One evaluation set: its records, their operations (ending in image/label/mask and the
    fields its metrics read), the transform from the classifier's logits onto this set's classes
    (None: the same classes), and the metrics of every example's prediction it is scored by
    besides top-1 / top-5 (names in `wilds.METRICS`; the evaluator then gathers predictions)."""
    name: str
    kind: str  # ID, OOD or VAL.
    source: Any  # A grain RandomAccessDataSource.
    operations: tuple[grain.Transformation, ...]
    num_classes: int
    logits_transform: Callable | None = None
    metrics: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the methods and the evaluation read from the data.

    train_operations turn an ID training record into a normalised float32 `image` (the methods add
    their text operations and key selection). pretrain_source exists for the embedded world only;
    caption_source (image-caption pairs for WLS, read through caption_operations) for the world
    or with data.captions. train_eval_set is the ID training records seen as an eval set
    (un-augmented): the feature bank of k-NN evaluation. val_set is ID data held out from both
    training and test (kind VAL), for choosing hyperparameters and watching training.
    """
    class_names: tuple[str, ...]
    train_source: Any
    train_operations: tuple[grain.Transformation, ...]
    eval_sets: tuple[EvalSet, ...]
    eval_worker_count: int
    train_eval_set: EvalSet | None = None
    val_set: EvalSet | None = None
    pretrain_source: Any = None
    caption_source: Any = None
    caption_operations: tuple[grain.Transformation, ...] = ()


def periodic_eval_sets(task: Task, ood_examples: int) -> tuple[EvalSet, ...]:
    """What a stage is scored on while it trains: the ID validation set and each OOD set cut to
    `ood_examples` evenly spaced records (a fixed subset, so that the curves are comparable)."""
    return (task.val_set, *(dataclasses.replace(s, source=EvenlySpaced(s.source, ood_examples))
                            for s in task.eval_sets if s.kind == OOD))


def check_names(data) -> None:
    """Unknown sources, domains or datasets are errors listing the valid ones (reads no data)."""
    if data.source not in SOURCES:
        raise ValueError(f"Unknown data.source {data.source!r}; valid choices: {list(SOURCES)}.")
    named = {"data.id_domain": (data.id_domain,), "data.ood_domains": tuple(data.ood_domains)}
    if data.source == "world":
        named["data.pretrain_domains"] = tuple(data.pretrain_domains)
        for key, domains in named.items():
            unknown = [d for d in domains if d not in world.DOMAINS]
            if unknown:
                raise ValueError(f"Unknown domain(s) {unknown} in {key}; valid domains of the "
                                 f"embedded world: {list(world.DOMAINS)}.")
        weights = data.get("pretrain_domain_weights")
        if weights is not None and (len(weights) != len(data.pretrain_domains) or any(
                not isinstance(w, int) or w < 1 for w in weights)):
            raise ValueError(f"data.pretrain_domain_weights={tuple(weights)} must be one positive "
                             f"integer per domain of data.pretrain_domains "
                             f"{tuple(data.pretrain_domains)}.")
        for key in ("data_dir", "label_space", "captions"):
            if data.get(key) is not None:
                raise ValueError(f"data.{key}={data[key]!r} applies to data.source='real' only; "
                                 "the embedded world reads no files.")
        return
    if tuple(data.pretrain_domains):
        raise ValueError(f"data.pretrain_domains={tuple(data.pretrain_domains)} names world "
                         "domains; real data has no pretraining captions, leave it empty.")
    roles = {"data.id_domain": ("train", "id_eval"), "data.ood_domains": ("ood_eval",)}
    for key, domains in named.items():
        for name in domains:
            splits = dataset_splits(name)
            if splits is None or any(getattr(splits, role) is None for role in roles[key]):
                valid = [n for n, s in SPLITS.items()
                         if all(getattr(s, role) is not None for role in roles[key])]
                raise ValueError(f"Dataset {name!r} in {key} is not supported there; valid "
                                 f"datasets: {valid} (DomainNet as 'domainnet/<domain>').")


def build(data, *, seed: int) -> Task:
    """The task of `data` (a config's `data` section); `seed` seeds the world's rendering."""
    check_names(data)
    task = _world_task(data, seed) if data.source == "world" else _real_task(data)
    if data.get("captions") is None:
        return task
    pairs, _ = captions.caption_source(data.captions, path=data.captions_path,
                                       num_pairs=data.get("caption_pairs"), seed=seed)
    return dataclasses.replace(task, caption_source=pairs, caption_operations=(
        transforms.fuse_decode((transforms.DecodeImage(), *_augment(data)))))


def _augment(data) -> list[grain.Transformation]:
    """uint8 image -> random resized crop (+ flip), normalised float32 (the training view).
    Real images are resampled bicubically, as open_clip's training transform (WiSE-FT, FLYP)."""
    operations = [transforms.RandomResizedCrop(
        size=data.image_size, scale=tuple(data.crop_scale),
        resample="bicubic" if data.source == "real" else "bilinear")]
    if data.flip:
        operations.append(transforms.RandomHorizontalFlip())
    return [*operations, _normalize(data)]


def _normalize(data) -> transforms.Normalize:
    return transforms.Normalize(mean=tuple(data.mean), std=tuple(data.std))


def _eval_keys(metrics=()) -> transforms.SelectKeys:
    """Keeps image, label, mask and the record fields that `metrics` read (FMoW's region)."""
    fields = (field for name in metrics for field in wilds.METRICS[name].fields)
    return transforms.SelectKeys(("image", "label", pipeline.MASK_KEY, *dict.fromkeys(fields)))


def _eval_view(data, metrics=()) -> list[grain.Transformation]:
    """Decoded uint8 real image -> CLIP's evaluation view, normalised, with the eval keys (after
    a dataset's own decode operations, e.g. ObjectNet's border crop, as WiSE-FT orders them)."""
    return [transforms.ResizeCenterCrop(data.image_size), _normalize(data), _eval_keys(metrics)]


def _world_task(data, seed: int) -> Task:
    def source(split, domains, examples_per_domain, domain_weights=None):
        return world.WorldSource(split=split, domains=domains,
                                 examples_per_domain=examples_per_domain,
                                 image_size=data.image_size, seed=seed,
                                 domain_weights=domain_weights)

    train = source("train", (data.id_domain,), data.train_examples_per_domain)
    pretrain_domains = tuple(data.pretrain_domains)
    eval_operations = (_normalize(data), _eval_keys())
    eval_sets = tuple(
        EvalSet(name=domain, kind=kind, operations=eval_operations, num_classes=len(world.CLASSES),
                source=Memoized(source("test", (domain,), data.eval_examples_per_domain)))
        for domain, kind in [(data.id_domain, ID), *[(d, OOD) for d in data.ood_domains]])
    val_set = EvalSet(name=data.id_domain, kind=VAL, operations=eval_operations,
                      num_classes=len(world.CLASSES),
                      source=Memoized(source("val", (data.id_domain,),
                                             data.eval_examples_per_domain)))
    return Task(class_names=tuple(world.CLASSES), train_source=train, val_set=val_set,
                train_operations=tuple(_augment(data)), eval_sets=eval_sets, eval_worker_count=0,
                train_eval_set=EvalSet(name=data.id_domain, kind=ID, source=Memoized(train),
                                       operations=eval_operations,
                                       num_classes=len(world.CLASSES)),
                pretrain_source=source("train", pretrain_domains, data.train_examples_per_domain,
                                       data.get("pretrain_domain_weights"))
                if pretrain_domains else None,
                caption_source=train, caption_operations=tuple(_augment(data)))


def _real_task(data) -> Task:
    options = {} if data.label_space is None else {"label_space": data.label_space}

    def read(name, role):
        splits = dataset_splits(name)
        return sources.get_source(splits.source or name, split=getattr(splits, role),
                                  data_dir=data.data_dir, **dict(splits.options), **options)

    def capped(source, limit):
        return source if limit is None else EvenlySpaced(source, limit)

    id_train, train_info = read(data.id_domain, "train")  # Read once, split in two.
    train = capped(HeldOut(id_train, VAL_EVERY, held_out=False), data.train_examples_per_domain)
    val = capped(HeldOut(id_train, VAL_EVERY, held_out=True), data.eval_examples_per_domain)
    class_names = train_info.class_names
    eval_sets = []
    for name, kind in [(data.id_domain, ID), *[(d, OOD) for d in data.ood_domains]]:
        source, info = read(name, "id_eval" if kind == ID else "ood_eval")
        source = capped(source, data.eval_examples_per_domain)
        transform = logits_transform(info)
        _check_classes(name, info, transform, class_names)
        metrics = dataset_splits(name).metrics
        operations = transforms.fuse_decode((*info.decode_operations,
                                             *_eval_view(data, metrics)))
        eval_sets.append(EvalSet(name=name, kind=kind, source=source, operations=operations,
                                 num_classes=info.num_classes, logits_transform=transform,
                                 metrics=metrics))
    train_eval_set = EvalSet(
        name=data.id_domain, kind=ID, source=train, num_classes=train_info.num_classes,
        operations=transforms.fuse_decode((*train_info.decode_operations, *_eval_view(data))))
    id_metrics = dataset_splits(data.id_domain).metrics
    val_set = EvalSet(name=data.id_domain, kind=VAL, source=val, metrics=id_metrics,
                      num_classes=train_info.num_classes,
                      operations=transforms.fuse_decode((*train_info.decode_operations,
                                                         *_eval_view(data, id_metrics))))
    return Task(class_names=class_names, train_source=train, val_set=val_set,
                train_operations=transforms.fuse_decode((*train_info.decode_operations,
                                                         *_augment(data))),
                eval_sets=tuple(eval_sets), eval_worker_count=data.worker_count,
                train_eval_set=train_eval_set)


def logits_transform(info) -> Callable | None:
    """The map from ImageNet-1k logits onto a set's classes (None: its labels are the ID ones)."""
    if info.label_subset is not None:
        return functools.partial(label_spaces.restrict_logits, class_ids=info.label_subset)
    if info.imagenet_class_groups is not None:
        return functools.partial(label_spaces.pool_logits,
                                 class_groups=info.imagenet_class_groups)
    return None


def _check_classes(name, info, transform, id_class_names) -> None:
    """Raises ValueError unless the classifier's logits give the set's classes: the same classes
    in the same order, or (transformed) as many as the set has."""
    logits = np.zeros((1, len(id_class_names)), np.float32)
    try:
        num_classes = (logits if transform is None else transform(logits)).shape[-1]
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    same = num_classes == info.num_classes and (
        transform is not None or tuple(info.class_names) == tuple(id_class_names))
    if not same:
        raise ValueError(f"{name}'s {info.num_classes} classes are not the ID classifier's "
                         f"{len(id_class_names)} classes, and there is no map between them; "
                         f"pick OOD datasets in the ID label space, or a shared "
                         f"data.label_space (e.g. '{sources.CIFAR_STL}' for CIFAR-10 -> STL-10).")


class Memoized(grain.RandomAccessDataSource):
    """`source` with every record kept after its first read.

    For the embedded world's evaluation sets, read in the main process (eval_worker_count 0):
    every WiSE-FT alpha and every periodic evaluation reads the same records, and rendering one
    costs about 1 ms of CPU while keeping it costs 3 KB (32 px).
    """

    def __init__(self, source):
        self._source = source
        self._records = {}

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        index = int(index)
        if index not in self._records:
            self._records[index] = self._source[index]
        return self._records[index]

    def __repr__(self) -> str:
        return f"Memoized({self._source!r})"


class HeldOut(grain.RandomAccessDataSource):
    """Every `every`-th record of `source` (held_out=True; its last record if it has fewer
    than `every`), or all the others (held_out=False): a validation slice cut from a training
    split, disjoint from what trains."""

    def __init__(self, source, every: int, *, held_out: bool):
        self._source, self._every, self._held_out = source, every, held_out
        count = len(source)
        held = np.arange(every - 1, count, every)
        if not len(held) and count > 1:
            held = np.array([count - 1])
        self._keys = held if held_out else np.setdiff1d(np.arange(count), held)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int):
        return self._source[int(self._keys[index])]

    def __repr__(self) -> str:
        part = "held out" if self._held_out else "kept"
        return f"HeldOut({self._source!r}, every={self._every}, {part}, size={len(self)})"


class EvenlySpaced(grain.RandomAccessDataSource):
    """`size` records of `source`, evenly spaced over it (a capped set keeps every class)."""

    def __init__(self, source, size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"A record limit must be a positive integer (or None: all), got "
                             f"{size!r}.")
        self._source = source
        self._keys = np.unique(np.linspace(0, len(source) - 1, min(size, len(source)),
                                           dtype=np.int64))

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int):
        return self._source[int(self._keys[index])]

    def __repr__(self) -> str:
        return f"EvenlySpaced({self._source!r}, size={len(self)})"
