"""What every real-data source hands the rest of the library: records and a `SourceInfo`.

Records are dicts with `image` (encoded JPEG/PNG bytes, decoded in the pipeline by
`info.decode_operations`), `label` (np.int32 in the dataset's label space) and, for caption
datasets, `caption` (str). Folder and CSV datasets list their files once and read each image's
bytes on access (`FileListSource`).
"""
import dataclasses
from typing import Any, Sequence

import grain.python as grain
import numpy as np
from etils import epath

from wlsft_jax.data import transforms

CLASSIFICATION, CAPTIONS = "classification", "captions"


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """Metadata of one split of a dataset.

    class_names: the dataset's classes, indexed by `label` (empty for caption datasets).
    label_subset: for ImageNet-R / ImageNet-A, the ImageNet class id of each label; score them
      with `label_spaces.restrict_logits(logits_1000, label_subset)`.
    imagenet_class_groups: for ObjectNet, the ImageNet class ids each label stands for; score
      with `label_spaces.pool_logits(logits_1000, imagenet_class_groups)`.
    decode_operations: grain transforms that turn `image` bytes into the uint8[H, W, 3] image the
      dataset's protocol evaluates (ObjectNet also crops its border); put them first.
    """
    name: str
    split: str
    kind: str
    num_records: int
    class_names: tuple[str, ...] = ()
    label_subset: tuple[int, ...] | None = None
    imagenet_class_groups: tuple[tuple[int, ...], ...] | None = None
    decode_operations: tuple[grain.MapTransform, ...] = (transforms.DecodeImage(),)

    def __post_init__(self):
        if self.kind not in (CLASSIFICATION, CAPTIONS):
            raise ValueError(f"kind={self.kind!r}; valid kinds: {CLASSIFICATION!r}, {CAPTIONS!r}.")
        if self.kind == CLASSIFICATION and not self.class_names:
            raise ValueError(f"{self.name}: a classification dataset needs its class names.")
        for field in ("label_subset", "imagenet_class_groups"):
            mapping = getattr(self, field)
            if mapping is not None and len(mapping) != len(self.class_names):
                raise ValueError(f"{self.name}: {field} has {len(mapping)} entries but there are "
                                 f"{len(self.class_names)} class names; give one per class.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_class_names(dataset: str, class_names: Sequence[str], num_classes: int) -> None:
    """Raises ValueError unless there is exactly one class name per class."""
    if len(class_names) != num_classes:
        raise ValueError(f"{dataset}: got {len(class_names)} class names for {num_classes} "
                         f"classes; give exactly one name per class, in label order.")


def check_split(dataset: str, split: str, valid_splits: Sequence[str]) -> None:
    """Raises ValueError naming the valid splits unless `split` is one of them."""
    if split not in valid_splits:
        raise ValueError(f"{dataset} has no split {split!r}; valid splits: {list(valid_splits)}.")


def existing_dir(path: str | epath.Path, what: str, how_to_get_it: str) -> epath.Path:
    """`path` as an epath.Path (local or gs://), or a ValueError saying how to provide it."""
    directory = epath.Path(path)
    if not directory.is_dir():
        raise ValueError(f"{what} not found: {directory} is not a directory. {how_to_get_it}")
    return directory


def existing_file(path: str | epath.Path, what: str, how_to_get_it: str) -> epath.Path:
    """`path` as an epath.Path, or a ValueError saying what the file is and how to provide it."""
    file = epath.Path(path)
    if not file.is_file():
        raise ValueError(f"{what} not found at {file}. {how_to_get_it}")
    return file


class FileListSource(grain.RandomAccessDataSource):
    """Image files with labels (and optional per-record int fields, e.g. WILDS regions).

    Record i is {"image": bytes of paths[i], "label": labels[i], **{k: fields[k][i]}}. The repr
    names the dataset, split and size, not the machine-specific root, so a training run resumes
    on another machine.
    """

    def __init__(self, *, name: str, split: str, paths: Sequence[str],
                 labels: Sequence[int], fields: dict[str, Sequence[int]] | None = None):
        fields = fields or {}
        for key, values in {"labels": labels, **fields}.items():
            if len(values) != len(paths):
                raise ValueError(f"{name}: {len(values)} {key} for {len(paths)} image paths; "
                                 f"give one per image.")
        self._name, self._split = name, split
        self._paths = tuple(str(path) for path in paths)
        self._labels = np.asarray(labels, dtype=np.int32)
        self._fields = {key: np.asarray(values, dtype=np.int32) for key, values in fields.items()}

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = {"image": epath.Path(self._paths[index]).read_bytes(),
                  "label": self._labels[index]}
        record.update({key: values[index] for key, values in self._fields.items()})
        return record

    def __repr__(self) -> str:
        return f"FileListSource(name={self._name!r}, split={self._split!r}, records={len(self)})"
