"""Label spaces shared between an in-distribution dataset and its shifted versions.

A model scored on a shifted set must answer in that set's classes:
- ImageNet-R / ImageNet-A: the 200 ImageNet classes they hold (`restrict_logits`).
- ObjectNet: 113 classes, each standing for one or more ImageNet classes; a class's logit is the
  largest logit of its ImageNet classes (`pool_logits`, as WiSE-FT and FLYP score ObjectNet).
- CIFAR-10 -> STL-10: the 9 classes both share (LP-FT's protocol drops CIFAR's "frog" and STL's
  "monkey"; STL's "car" is CIFAR's "automobile").
"""
from typing import Sequence

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck")
# The classes CIFAR-10 and STL-10 share, named as in CIFAR-10, in CIFAR-10's order.
CIFAR_STL_SHARED_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "horse",
                            "ship", "truck")
_STL_TO_CIFAR_NAME = {"car": "automobile"}


def shared_label_map(class_names: Sequence[str], shared_classes: Sequence[str],
                     renames: dict[str, str] | None = None) -> np.ndarray:
    """int32[len(class_names)]: each class's index in `shared_classes`, or -1 if it has none.

    `renames` maps a dataset's class name to its name in `shared_classes`.
    """
    renames = renames or {}
    index = {name: i for i, name in enumerate(shared_classes)}
    return np.asarray([index.get(renames.get(name, name), -1) for name in class_names],
                      dtype=np.int32)


def cifar_stl_label_map(dataset_classes: Sequence[str]) -> np.ndarray:
    """The label map from CIFAR-10's or STL-10's classes onto `CIFAR_STL_SHARED_CLASSES`."""
    return shared_label_map(dataset_classes, CIFAR_STL_SHARED_CLASSES, _STL_TO_CIFAR_NAME)


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
