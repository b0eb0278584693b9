"""BREEDS subpopulation shifts (Santurkar et al., 2021): Living-17 and Entity-30.

Each superclass groups ImageNet classes; its "source" classes are trained and tested on (ID), its
"target" classes only tested on (OOD). Images come from an ImageNet folder,
`<data_dir>/imagenet/{train,val}/<wnid>/*.JPEG`; the hierarchy from a JSON file the user
writes once (default `<data_dir>/breeds/<living17|entity30>.json`, see launch/prepare_data.md):

    {"superclasses": [
        {"name": "salamander", "source": ["n01629819", ...], "target": ["n01631663", ...]},
        ...]}

Labels are superclass positions in that list; `name` is the class name used for prompts.
"""
import json

from etils import epath

from wlsft_jax.data.source_base import (CLASSIFICATION, FileListSource, SourceInfo, check_split,
                                        existing_dir, existing_file)

HIERARCHIES = {"living17": 17, "entity30": 30}  # name -> number of superclasses
SPLITS = ("train", "val")
SUBPOPULATIONS = ("source", "target")
IMAGENET_DIR, BREEDS_DIR = "imagenet", "breeds"
_FORMAT = ('{"superclasses": [{"name": str, "source": [wnid, ...], "target": [wnid, ...]}, '
           '...]}')


def load_breeds_hierarchy(path: str | epath.Path,
                          num_superclasses: int) -> tuple[tuple[str, dict[str, list[str]]], ...]:
    """((superclass name, {"source": wnids, "target": wnids}), ...) from a hierarchy file."""
    path = existing_file(path, "BREEDS hierarchy file",
                         f"Write it once as {_FORMAT} (see launch/prepare_data.md).")
    try:
        superclasses = json.loads(path.read_text())["superclasses"]
        hierarchy = tuple((entry["name"], {part: list(entry[part]) for part in SUBPOPULATIONS})
                          for entry in superclasses)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} does not follow the BREEDS hierarchy format {_FORMAT} "
                         f"({type(error).__name__}: {error}).") from None
    if len(hierarchy) != num_superclasses:
        raise ValueError(f"{path} lists {len(hierarchy)} superclasses; this hierarchy has "
                         f"{num_superclasses}.")
    wnids = [wnid for _, parts in hierarchy for part in SUBPOPULATIONS for wnid in parts[part]]
    duplicates = sorted({wnid for wnid in wnids if wnids.count(wnid) > 1})
    if duplicates:
        raise ValueError(f"{path}: ImageNet classes {duplicates[:5]} appear more than once; each "
                         f"belongs to one superclass and one subpopulation.")
    return hierarchy


def breeds_source(*, split: str, data_dir: str, hierarchy: str, subpopulation: str = "source",
                  hierarchy_file: str | None = None) -> tuple[FileListSource, SourceInfo]:
    """ImageNet images of one BREEDS subpopulation, labelled by superclass."""
    if hierarchy not in HIERARCHIES:
        raise ValueError(f"Unknown BREEDS hierarchy {hierarchy!r}; valid: {list(HIERARCHIES)}.")
    check_split(hierarchy, split, SPLITS)
    if subpopulation not in SUBPOPULATIONS:
        raise ValueError(f"subpopulation={subpopulation!r}; valid: {list(SUBPOPULATIONS)}.")
    superclasses = load_breeds_hierarchy(
        hierarchy_file or epath.Path(data_dir) / BREEDS_DIR / f"{hierarchy}.json",
        HIERARCHIES[hierarchy])
    images_dir = existing_dir(epath.Path(data_dir) / IMAGENET_DIR / split, "ImageNet images",
                              "Extract ImageNet as <data_dir>/imagenet/{train,val}/<wnid>/*.JPEG "
                              "(see launch/prepare_data.md).")
    paths, labels = [], []
    for label, (_, parts) in enumerate(superclasses):
        for wnid in parts[subpopulation]:
            files = sorted(str(file) for file in
                           existing_dir(images_dir / wnid, f"ImageNet class {wnid}",
                                        "Extract all 1000 class folders.").iterdir())
            paths.extend(files)
            labels.extend([label] * len(files))
    name = f"{hierarchy}/{subpopulation}"
    source = FileListSource(name=name, split=split, paths=paths, labels=labels)
    return source, SourceInfo(name=name, split=split, kind=CLASSIFICATION,
                              num_records=len(source),
                              class_names=tuple(name for name, _ in superclasses))
