"""Result records and their rows: the data model of the robustness report.

A run's results are flat records, one per (method, alpha, dataset, metric, seed):
``dict(method=str, alpha=float, dataset=str, metric=str, seed=int, value=float, kind="id"|"ood")``
with ``value`` a fraction in [0, 1] (top-1 accuracy 0.762, not 76.2). A report groups them into
rows, one per (method, alpha), each column one value per seed: the ID dataset (in the ID
metric), each OOD dataset and their plain mean ``avg_ood`` (in the OOD metric). The effective-
robustness line lives on logit axes, ``logit(p) = log(p / (1 - p))`` with p clipped to
[1e-4, 1 - 1e-4].
"""
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

RECORD_FIELDS = ("method", "alpha", "dataset", "metric", "seed", "value", "kind")
KEY_FIELDS = ("method", "alpha", "dataset", "metric", "seed")
KINDS = ("id", "ood")
LOGIT_CLIP = 1e-4
STD_DDOF = 1
AVG_OOD = "avg_ood"
_FIELD_TYPES = {
    "method": str, "alpha": float, "dataset": str, "metric": str, "seed": int, "value": float,
    "kind": str,
}


def validate_record(record: Mapping[str, Any]) -> dict:
    """The record with canonical field types; ValueError naming what is wrong otherwise."""
    missing = [f for f in RECORD_FIELDS if f not in record]
    unknown = sorted(set(record) - set(RECORD_FIELDS))
    if missing or unknown:
        raise ValueError(
            f"Record {dict(record)} has missing keys {missing} and unknown keys {unknown}; "
            f"a record has exactly the keys {list(RECORD_FIELDS)}."
        )
    try:
        canonical = {f: _FIELD_TYPES[f](record[f]) for f in RECORD_FIELDS}
    except (TypeError, ValueError) as error:
        expected = {f: t.__name__ for f, t in _FIELD_TYPES.items()}
        raise ValueError(f"Record {dict(record)}: {error}; expected types {expected}.") from error
    if canonical["seed"] != float(record["seed"]):
        raise ValueError(f"Record {dict(record)} has a non-integer seed; seeds are integers.")
    if canonical["kind"] not in KINDS:
        raise ValueError(
            f"Record {dict(record)} has kind={canonical['kind']!r}; valid kinds: {list(KINDS)}."
        )
    if not math.isfinite(canonical["value"]):
        raise ValueError(
            f"Record {dict(record)} has a non-finite value; values are finite fractions in [0, 1]."
        )
    return canonical


def record_key(record: Mapping[str, Any]) -> tuple:
    """A record's identity: (method, alpha, dataset, metric, seed)."""
    return tuple(record[f] for f in KEY_FIELDS)


def merge_records(
    existing: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]
) -> list[dict]:
    """Union of two record lists deduplicated by `record_key` (new wins), sorted by key."""
    merged = {}
    for record in [*existing, *new]:
        record = validate_record(record)
        merged[record_key(record)] = record
    return [merged[key] for key in sorted(merged)]


def load_records(path: str) -> list[dict]:
    """Reads a results.json written by `write_report`: validated records sorted by key."""
    with epath.Path(path).open() as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(
            f"{path} holds a JSON {type(records).__name__}; expected a list of records with "
            f"keys {list(RECORD_FIELDS)}."
        )
    return unique_records(records)


def logit(p):
    """log(p / (1 - p)) with p clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclasses.dataclass
class Row:
    """One (method, alpha) line of the table; each column holds one value per seed."""

    method: str
    alpha: float
    seeds: list[int]
    columns: dict[str, np.ndarray]

    def mean(self, column: str) -> float:
        return float(np.mean(self.columns[column]))


@dataclasses.dataclass
class BaselineLine:
    """avg OOD = sigmoid(slope * logit(ID) + intercept), fitted through the baseline points."""

    slope: float
    intercept: float

    def predict(self, id_value):
        return sigmoid(self.slope * logit(id_value) + self.intercept)

    def __str__(self) -> str:
        sign = "-" if self.intercept < 0 else "+"
        return f"logit(avg OOD) = {self.slope:.4f} · logit(ID) {sign} {abs(self.intercept):.4f}"


@dataclasses.dataclass
class Baseline:
    """The fixed line effective robustness is measured against, what it was fitted through
    (`points`: (name, ID, avg OOD) seed means, drawn on the plot) and where it comes from."""

    line: BaselineLine
    points: Sequence[tuple[str, float, float]]
    description: str


def unique_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Validated records sorted by key; a repeated key is an error (merge_records resolves it)."""
    unique = {}
    for record in map(validate_record, records):
        key = record_key(record)
        if key in unique:
            raise ValueError(
                f"Two records share the key {dict(zip(KEY_FIELDS, key))}; each (method, alpha, "
                "dataset, metric, seed) may appear once. Use merge_records to let newer results "
                "replace older ones."
            )
        unique[key] = record
    return [unique[key] for key in sorted(unique)]


def kind_metrics(metric: str, ood_metric: str | None) -> dict[str, str]:
    """{"id": metric, "ood": ood_metric}, the OOD metric defaulting to the ID one."""
    return {"id": metric, "ood": ood_metric or metric}


def metric_label(metrics: Mapping[str, str]) -> str:
    """The metric's name, or e.g. "top1 (ID), worst_region_top1 (OOD)" when the kinds differ."""
    if metrics["id"] == metrics["ood"]:
        return metrics["id"]
    return f"{metrics['id']} (ID), {metrics['ood']} (OOD)"


def _check_datasets(
    records: list[dict], *, id_dataset: str, ood_datasets: Sequence[str],
    metrics: Mapping[str, str],
) -> None:
    """Every reported dataset has records of its metric, all of the kind it is reported as."""
    datasets = sorted({r["dataset"] for r in records})
    for dataset, kind in [(id_dataset, "id"), *((d, "ood") for d in ood_datasets)]:
        if dataset not in datasets:
            raise ValueError(
                f"{kind.upper()} dataset {dataset!r} has no records for metric "
                f"{metrics[kind]!r}; "
                f"datasets with records: {datasets}."
            )
        wrong_kinds = sorted({r["kind"] for r in records if r["dataset"] == dataset} - {kind})
        if wrong_kinds:
            raise ValueError(
                f"Dataset {dataset!r} is reported as {kind!r} but has records of kind "
                f"{wrong_kinds}; all its records need kind={kind!r}."
            )


def build_rows(
    records: list[dict], *, id_dataset: str, ood_datasets: Sequence[str],
    metrics: Mapping[str, str],
) -> list[Row]:
    """Rows with ID, per-OOD and average-OOD columns: the ID dataset's records of
    metrics["id"], every other dataset's of metrics["ood"]."""
    recorded = sorted({r["metric"] for r in records})
    for metric in dict.fromkeys(metrics.values()):
        if metric not in recorded:
            raise ValueError(f"No records for metric {metric!r}; metrics with records: "
                             f"{recorded}.")

    def metric_of(dataset):
        return metrics["id" if dataset == id_dataset else "ood"]

    records = [r for r in records if r["metric"] == metric_of(r["dataset"])]
    _check_datasets(records, id_dataset=id_dataset, ood_datasets=ood_datasets, metrics=metrics)
    values = {(r["method"], r["alpha"], r["dataset"], r["seed"]): r["value"] for r in records}
    rows = []
    for method, alpha in sorted({(r["method"], r["alpha"]) for r in records}):
        seeds = sorted(s for m, a, d, s in values if (m, a, d) == (method, alpha, id_dataset))
        if not seeds:
            raise ValueError(
                f"{method} at alpha={alpha:g} has no {id_dataset!r} (ID) record for "
                f"{metrics['id']!r}; "
                "every (method, alpha) needs ID and OOD records."
            )
        columns = {}
        for dataset in [id_dataset, *ood_datasets]:
            missing = [s for s in seeds if (method, alpha, dataset, s) not in values]
            if missing:
                raise ValueError(
                    f"{method} at alpha={alpha:g} has no {dataset!r} record for seeds {missing}; "
                    f"seeds with an ID record: {seeds}."
                )
            columns[dataset] = np.array([values[method, alpha, dataset, s] for s in seeds])
            if np.any((columns[dataset] < 0) | (columns[dataset] > 1)):
                raise ValueError(
                    f"{method} at alpha={alpha:g} has {metric_of(dataset)} on {dataset!r} "
                    "outside [0, 1] "
                    f"({columns[dataset].tolist()}); the report takes fractions (0.762, not 76.2)."
                )
        columns[AVG_OOD] = np.mean([columns[d] for d in ood_datasets], axis=0)
        rows.append(Row(method, alpha, seeds, columns))
    return rows


def fit_baseline_line(rows: Sequence[Row], id_dataset: str) -> BaselineLine:
    """Least-squares line through the rows' seed-mean (ID, avg OOD) on logit axes; ValueError
    when they have fewer than two distinct ID values (no line is defined)."""
    ids = logit([row.mean(id_dataset) for row in rows])
    if len(np.unique(ids)) < 2:
        raise ValueError(f"A baseline line needs models with at least two distinct ID values; "
                         f"got {len(rows)} model(s) with ID {sorted(set(ids.round(4)))} (logit).")
    slope, intercept = np.polyfit(ids, logit([row.mean(AVG_OOD) for row in rows]), 1)
    return BaselineLine(float(slope), float(intercept))


def rows_of(records, *, id_dataset: str, ood_datasets: Sequence[str], metric: str = "top1",
            ood_metric: str | None = None) -> list[Row]:
    """The report's (method, alpha) rows of `records` (checked as `write_report` checks them)."""
    return build_rows(unique_records(records), id_dataset=id_dataset,
                       ood_datasets=list(ood_datasets), metrics=kind_metrics(metric, ood_metric))
