"""Label spaces shared between an in-distribution dataset and its shifted versions.

A model scored on a shifted set must answer in that set's classes:
- ImageNet-R / ImageNet-A: the 200 ImageNet classes they hold (`restrict_logits`).
- ObjectNet: 113 classes, each standing for one or more ImageNet classes; a class's logit is the
  largest logit of its ImageNet classes (`pool_logits`, as WiSE-FT and FLYP score ObjectNet).
- CIFAR-10 -> STL-10: the 9 classes both share (LP-FT's protocol drops CIFAR's "frog" and STL's
  "monkey"; STL's "car" is CIFAR's "automobile").
- DomainNet (LP-FT): the 40 classes of Tan et al.'s version (COAL) out of DomainNet's 345.
Datasets read in a shared label space (`SHARED_LABEL_SPACES`) drop the records of other classes.
"""
from typing import Mapping, NamedTuple, Sequence

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck")
# The classes CIFAR-10 and STL-10 share, named as in CIFAR-10, in CIFAR-10's order.
CIFAR_STL_SHARED_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "horse",
                            "ship", "truck")
# LP-FT's DomainNet (Kumar et al., 2022) is the 40-class version of Tan et al., "Class-imbalanced
# domain adaptation: an empirical odyssey" (COAL, 2020), which LP-FT reads from the split files
# SENTRY (Prabhu et al., 2021) publishes: github.com/virajprabhu/SENTRY,
# data/DomainNet/txt/<domain>_<train|test>_mini.txt. The classes are in those files' label order
# (0..39, the same in all 8 files; not alphabetical at the end), so labels match LP-FT's.
# Those files list every image of these classes in DomainNet's official train / test split files,
# from which TFDS builds `domainnet/<domain>`.
DOMAINNET40_CLASSES = (
    "airplane", "ambulance", "apple", "backpack", "banana", "bathtub", "bear", "bed", "bee",
    "bicycle", "bird", "book", "bridge", "bus", "cake", "calculator", "camera", "car", "cat",
    "chair", "clock", "cow", "dog", "dolphin", "duck", "elephant", "fence", "fork", "horse",
    "house", "rabbit", "scissors", "strawberry", "table", "telephone", "truck", "butterfly",
    "sheep", "drums", "donut")


class SharedClasses(NamedTuple):
    """A label space several datasets are read in: its classes, in label order, and `renames`
    from a dataset's class name to its name here."""
    classes: tuple[str, ...]
    renames: Mapping[str, str]


CIFAR_STL, DOMAINNET40 = "cifar_stl", "domainnet40"
SHARED_LABEL_SPACES = {
    CIFAR_STL: SharedClasses(CIFAR_STL_SHARED_CLASSES, {"car": "automobile"}),
    DOMAINNET40: SharedClasses(DOMAINNET40_CLASSES, {}),
}


def shared_label_map(label_space: str, class_names: Sequence[str]) -> np.ndarray:
    """int32[len(class_names)]: each of a dataset's classes' label in `label_space` (a name of
    SHARED_LABEL_SPACES), or -1 if it is not in it. Every class of the label space must be among
    `class_names`, so that a renamed or missing class is an error rather than an empty class."""
    shared = SHARED_LABEL_SPACES[label_space]
    index = {name: i for i, name in enumerate(shared.classes)}
    label_map = np.asarray([index.get(shared.renames.get(name, name), -1) for name in class_names],
                           dtype=np.int32)
    missing = [name for i, name in enumerate(shared.classes) if i not in label_map]
    if missing:
        raise ValueError(f"Label space {label_space!r} has classes {missing[:5]} that the dataset "
                         f"(classes {list(class_names)[:5]}...) lacks; is it the dataset the "
                         f"label space was made for?")
    return label_map


def restrict_logits(logits, class_ids: Sequence[int]):
    """logits[..., 1000] -> logits[..., len(class_ids)]: the columns of the subset's classes."""
    _check_class_ids(logits, class_ids)
    return logits[..., np.asarray(class_ids)]


def pool_logits(logits, class_groups: Sequence[Sequence[int]]):
    """logits[..., 1000] -> logits[..., len(class_groups)]: for each group (a target class), the
    largest logit over its ImageNet classes (ObjectNet's 113 classes from ImageNet's 1000).
    Works on numpy and (traced) jax arrays alike: one gather, then a max."""
    if not class_groups or any(len(group) == 0 for group in class_groups):
        raise ValueError("Every target class needs at least one ImageNet class id; got "
                         f"{[list(group) for group in class_groups][:5]}...")
    for group in class_groups:
        _check_class_ids(logits, group)
    # Groups padded to one width by repeating their first id (a repeat leaves the max as it is).
    width = max(len(group) for group in class_groups)
    index = np.asarray([[*group, *[group[0]] * (width - len(group))] for group in class_groups])
    return logits[..., index].max(axis=-1)


def _check_class_ids(logits, class_ids: Sequence[int]) -> None:
    """Raises ValueError unless every id indexes a column of `logits`."""
    num_columns = np.shape(logits)[-1]
    bad = [i for i in class_ids if not 0 <= int(i) < num_columns]
    if bad:
        raise ValueError(f"Class ids {bad[:5]} are outside the {num_columns} logit columns; valid "
                         f"ids: 0..{num_columns - 1} (pass logits over all ImageNet classes).")
