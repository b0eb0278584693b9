"""WILDS iWildCam and FMoW (Koh et al., 2021) from their released folders, and their metrics.

Layouts (as the `wilds` package downloads them):
- `<data_dir>/iwildcam_v2.0/`: metadata.csv (columns split, filename, y), images in train/,
  class names in categories.csv (columns y and english or name; rows with y outside the labels,
  such as WILDS's 99999, are skipped).
- `<data_dir>/fmow_v1.1/`: rgb_metadata.csv (columns split, category, country_code, timestamp),
  country_code_mapping.csv (columns alpha-3, region), images/rgb_img_<row>.png.
Splits follow WILDS's official schemes: train, val / test (OOD), id_val / id_test.
iWildCam is scored by macro-F1, FMoW by worst-region accuracy (`METRICS`).
"""
import csv
import datetime
import io
from typing import Callable, NamedTuple, Sequence

import numpy as np
from etils import epath

from wlsft_jax.data.source_base import (CLASSIFICATION, FileListSource, SourceInfo,
                                        check_class_names, check_split, existing_dir,
                                        existing_file)

IWILDCAM_DIR, FMOW_DIR = "iwildcam_v2.0", "fmow_v1.1"
SPLITS = ("train", "val", "test", "id_val", "id_test")
FMOW_CATEGORIES = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility",
    "park", "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison",
    "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility",
    "stadium", "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower",
    "tunnel_opening", "waste_disposal", "water_treatment_facility", "wind_farm", "zoo")
# FMoW regions; records carry `region` as an index into this tuple. "Other" (countries outside
# the mapping) is left out of the worst-region accuracy, as in WILDS.
FMOW_REGIONS = ("Africa", "Americas", "Asia", "Europe", "Oceania", "Other")
# WILDS's official FMoW scheme: images from 2016 on are the OOD test set, 2013-2015 OOD val.
FMOW_OOD_TEST_YEAR, FMOW_OOD_VAL_YEAR = 2016, 2013
_WILDS_HELP = "Download it with the `wilds` package (see launch/prepare_data.md)."


def _read_csv(path: epath.Path, required_columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file, checked to have `required_columns`."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    missing = [column for column in required_columns if rows and column not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path} must be a CSV with columns {list(required_columns)}; it "
                         f"{'is empty' if not rows else f'lacks {missing}'}.")
    return rows


def iwildcam_class_names(categories_csv: epath.Path, num_classes: int) -> tuple[str, ...]:
    """Class names by label from a categories CSV (`english` column if present, else `name`)."""
    rows = _read_csv(categories_csv, ("y", "name"))
    column = "english" if "english" in rows[0] else "name"
    names = {int(row["y"]): row[column].lower() for row in rows if int(row["y"]) < num_classes}
    check_class_names("iwildcam", [names[y] for y in sorted(names)], num_classes)
    return tuple(names[y] for y in range(num_classes))


def iwildcam_source(*, split: str, data_dir: str,
                    categories_csv: str | None = None) -> tuple[FileListSource, SourceInfo]:
    """iWildCam camera-trap images of one WILDS split, labels 0..181."""
    check_split("iwildcam", split, SPLITS)
    root = existing_dir(epath.Path(data_dir) / IWILDCAM_DIR, "iWildCam", _WILDS_HELP)
    rows = _read_csv(existing_file(root / "metadata.csv", "iWildCam metadata", _WILDS_HELP),
                     ("split", "filename", "y"))
    num_classes = max(int(row["y"]) for row in rows) + 1
    class_names = iwildcam_class_names(
        existing_file(categories_csv or root / "categories.csv", "iWildCam class names",
                      "Pass categories_csv= (columns y, name or english)."), num_classes)
    rows = [row for row in rows if row["split"] == split]
    source = FileListSource(name="iwildcam", split=split,
                            paths=[str(root / "train" / row["filename"]) for row in rows],
                            labels=[int(row["y"]) for row in rows])
    return source, SourceInfo(name="iwildcam", split=split, kind=CLASSIFICATION,
                              num_records=len(source), class_names=class_names)


def _fmow_split(row: dict[str, str]) -> str | None:
    """The WILDS split of an FMoW metadata row (None: sequestered or unused)."""
    timestamp = datetime.datetime.fromisoformat(row["timestamp"])
    if timestamp.tzinfo is not None:
        timestamp = timestamp.astimezone(datetime.timezone.utc)
    year = timestamp.year
    if year >= FMOW_OOD_TEST_YEAR:
        return {"test": "test"}.get(row["split"])
    if year >= FMOW_OOD_VAL_YEAR:
        return {"val": "val"}.get(row["split"])
    return {"train": "train", "val": "id_val", "test": "id_test"}.get(row["split"])


def fmow_source(*, split: str, data_dir: str) -> tuple[FileListSource, SourceInfo]:
    """FMoW satellite images of one WILDS split (62 classes); records carry `region`."""
    check_split("fmow", split, SPLITS)
    root = existing_dir(epath.Path(data_dir) / FMOW_DIR, "FMoW", _WILDS_HELP)
    rows = _read_csv(existing_file(root / "rgb_metadata.csv", "FMoW metadata", _WILDS_HELP),
                     ("split", "category", "country_code", "timestamp"))
    region_of_country = {row["alpha-3"]: row["region"] for row in _read_csv(
        existing_file(root / "country_code_mapping.csv", "FMoW country codes", _WILDS_HELP),
        ("alpha-3", "region"))}
    category_ids = {name: i for i, name in enumerate(FMOW_CATEGORIES)}
    paths, labels, regions = [], [], []
    for row_index, row in enumerate(rows):
        if _fmow_split(row) != split:
            continue
        if row["category"] not in category_ids:
            raise ValueError(f"FMoW row {row_index} has category {row['category']!r}; valid "
                             f"categories: {list(FMOW_CATEGORIES)}.")
        region = region_of_country.get(row["country_code"], "Other")
        paths.append(str(root / "images" / f"rgb_img_{row_index}.png"))
        labels.append(category_ids[row["category"]])
        regions.append(FMOW_REGIONS.index(region if region in FMOW_REGIONS else "Other"))
    source = FileListSource(name="fmow", split=split, paths=paths, labels=labels,
                            fields={"region": regions})
    return source, SourceInfo(name="fmow", split=split, kind=CLASSIFICATION,
                              num_records=len(source),
                              class_names=tuple(c.replace("_", " ") for c in FMOW_CATEGORIES))


def macro_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """F1 averaged over the classes present in `labels` (WILDS's iWildCam metric)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must be "
                         f"non-empty and of the same shape.")
    scores = []
    for label in np.unique(labels):
        true_positives = np.sum((predictions == label) & (labels == label))
        denominator = np.sum(predictions == label) + np.sum(labels == label)
        scores.append(2 * true_positives / denominator)
    return float(np.mean(scores))


def worst_region_accuracy(labels: Sequence[int], predictions: Sequence[int],
                          regions: Sequence[int]) -> float:
    """The lowest accuracy over FMoW regions with examples, "Other" excluded (WILDS's metric)."""
    labels, predictions, regions = map(np.asarray, (labels, predictions, regions))
    if not labels.shape == predictions.shape == regions.shape or labels.size == 0:
        raise ValueError(f"labels {labels.shape}, predictions {predictions.shape} and regions "
                         f"{regions.shape} must be non-empty and of the same shape.")
    other = FMOW_REGIONS.index("Other")
    accuracies = [np.mean(labels[regions == region] == predictions[regions == region])
                  for region in np.unique(regions) if region != other]
    if not accuracies:
        raise ValueError("No example lies in a region other than 'Other'.")
    return float(np.min(accuracies))


class PredictionMetric(NamedTuple):
    """A metric of every example's prediction: `function(labels, predictions, *fields)`, where
    `fields` name the per-record values it reads besides the label (FMoW's region)."""
    function: Callable[..., float]
    fields: tuple[str, ...] = ()


# WILDS's official metrics by the name their report records carry.
METRICS = {
    "macro_f1": PredictionMetric(macro_f1),
    "worst_region_top1": PredictionMetric(worst_region_accuracy, ("region",)),
}
