"""ObjectNet (Barbu et al., 2019) as WiSE-FT and FLYP evaluate it: the 113 classes it shares with
ImageNet, scored by max-pooling an ImageNet classifier's logits over each class's ImageNet
classes, on images with their 1-pixel red border cropped away (2 pixels per side).

Expected layout (the official release, unzipped): `<data_dir>/objectnet-1.0/images/<folder>/*`
(313 folders, 50,000 images) and `<data_dir>/objectnet-1.0/mappings/` with the release's
folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json, pytorch_to_imagenet_2012_id.json
and imagenet_to_label_2012_v2.
"""
import dataclasses
import json
import warnings

import grain.python as grain
import numpy as np
from etils import epath

from wlsft_jax.data import transforms
from wlsft_jax.data.source_base import (CLASSIFICATION, FileListSource, SourceInfo, check_split,
                                        existing_dir, existing_file)

OBJECTNET_DIR = "objectnet-1.0"
SPLITS = ("test",)
EXPECTED_IMAGES = 50_000
# A copy with fewer images than this is incomplete (FLYP's authors scored such a copy unaware).
MIN_COMPLETE_FRACTION = 0.98
BORDER_PIXELS = 2
_MAPPING_HELP = ("The mapping files ship in the ObjectNet release's mappings/ folder "
                 "(see launch/prepare_data.md).")


@dataclasses.dataclass(frozen=True)
class ObjectNetMapping:
    """ObjectNet's classes that exist in ImageNet, sorted by image folder name.

    imagenet_class_groups[i] holds the ImageNet label ids (TFDS / PyTorch order) of class i.
    """
    folders: tuple[str, ...]
    class_names: tuple[str, ...]
    imagenet_class_groups: tuple[tuple[int, ...], ...]


def _read_json(path: epath.Path) -> dict:
    """A JSON object from `path`, or a ValueError naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}). {_MAPPING_HELP}") from None


def load_objectnet_mapping(mappings_dir: str | epath.Path) -> ObjectNetMapping:
    """Reads the release's mapping files: ObjectNet class -> ImageNet label ids.

    objectnet_to_imagenet_1k.json names ImageNet classes by their label text (joined with "; "),
    imagenet_to_label_2012_v2 gives that text per ILSVRC-2012 id (line order) and
    pytorch_to_imagenet_2012_id.json maps our label ids to ILSVRC-2012 ids.
    """
    files = {name: existing_file(epath.Path(mappings_dir) / name, f"ObjectNet mapping file "
                                 f"{name}", _MAPPING_HELP)
             for name in ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                          "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")}
    folder_of_class = {name: folder for folder, name in
                       _read_json(files["folder_to_objectnet_label.json"]).items()}
    imagenet_names_of_class = _read_json(files["objectnet_to_imagenet_1k.json"])
    label_id_of_2012_id = {int(id_2012): int(label_id) for label_id, id_2012 in
                           _read_json(files["pytorch_to_imagenet_2012_id.json"]).items()}
    label_ids_of_text: dict[str, list[int]] = {}
    for id_2012, text in enumerate(files["imagenet_to_label_2012_v2"].read_text().splitlines()):
        label_ids_of_text.setdefault(text.strip(), []).append(label_id_of_2012_id[id_2012])

    groups_of_folder = {}
    for class_name, imagenet_names in imagenet_names_of_class.items():
        if class_name not in folder_of_class:
            raise ValueError(f"ObjectNet class {class_name!r} of objectnet_to_imagenet_1k.json has "
                             f"no folder in folder_to_objectnet_label.json. {_MAPPING_HELP}")
        group = []
        for text in imagenet_names.split("; "):
            label_ids = label_ids_of_text.get(text, [])
            if len(label_ids) != 1:
                raise ValueError(f"ImageNet class {text!r} (for ObjectNet {class_name!r}) matches "
                                 f"{len(label_ids)} lines of imagenet_to_label_2012_v2; it must "
                                 f"match exactly one. {_MAPPING_HELP}")
            group.extend(label_ids)
        groups_of_folder[folder_of_class[class_name]] = tuple(group)
    class_of_folder = {folder: name for name, folder in folder_of_class.items()}
    folders = tuple(sorted(groups_of_folder))
    return ObjectNetMapping(
        folders=folders, class_names=tuple(class_of_folder[f].lower() for f in folders),
        imagenet_class_groups=tuple(groups_of_folder[f] for f in folders))


@dataclasses.dataclass(frozen=True)
class CropBorder(grain.MapTransform):
    """Removes `pixels` rows and columns from each side of a uint8 image (ObjectNet's frame)."""
    pixels: int = BORDER_PIXELS
    key: str = "image"

    def map(self, element):
        image = element[self.key]
        if min(image.shape[:2]) <= 2 * self.pixels:
            raise ValueError(f"CropBorder({self.pixels}) needs images larger than "
                             f"{2 * self.pixels} pixels per side, got {image.shape}.")
        p = self.pixels
        return {**element, self.key: np.ascontiguousarray(image[p:-p, p:-p])}


def objectnet_source(*, split: str, data_dir: str,
                     mappings_dir: str | None = None) -> tuple[FileListSource, SourceInfo]:
    """ObjectNet's images of the 113 ImageNet-overlapping classes, labels 0..112 (folder order).

    Warns when the copy holds far fewer or more than 50,000 images overall.
    """
    check_split("objectnet", split, SPLITS)
    root = existing_dir(epath.Path(data_dir) / OBJECTNET_DIR, "ObjectNet",
                        f"Unzip the ObjectNet release into {data_dir} (see "
                        f"launch/prepare_data.md).")
    mapping = load_objectnet_mapping(mappings_dir or root / "mappings")
    images_dir = existing_dir(root / "images", "ObjectNet images", "Unzip the full release.")
    files_of_folder = {folder.name: sorted(str(file) for file in folder.iterdir())
                       for folder in images_dir.iterdir() if folder.is_dir()}
    total_images = sum(len(files) for files in files_of_folder.values())
    if abs(total_images - EXPECTED_IMAGES) > (1 - MIN_COMPLETE_FRACTION) * EXPECTED_IMAGES:
        warnings.warn(f"ObjectNet at {images_dir} holds {total_images} images, not about "
                      f"{EXPECTED_IMAGES}: the copy looks incomplete, and accuracies on it are not "
                      f"comparable with published ones.", stacklevel=2)
    missing = [folder for folder in mapping.folders if folder not in files_of_folder]
    if missing:
        raise ValueError(f"ObjectNet folders {missing[:5]} (of {len(missing)} missing) are not "
                         f"in {images_dir}; unzip the full release.")
    paths, labels = [], []
    for label, folder in enumerate(mapping.folders):
        paths.extend(files_of_folder[folder])
        labels.extend([label] * len(files_of_folder[folder]))
    source = FileListSource(name="objectnet", split=split, paths=paths, labels=labels)
    info = SourceInfo(name="objectnet", split=split, kind=CLASSIFICATION, num_records=len(source),
                      class_names=mapping.class_names,
                      imagenet_class_groups=mapping.imagenet_class_groups,
                      decode_operations=(transforms.DecodeImage(), CropBorder()))
    return source, info
