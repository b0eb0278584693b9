"""The robustness report: ID / OOD tables, effective robustness and the ID-vs-OOD plot.

A run's results are flat records, one per (method, alpha, dataset, metric, seed):
``dict(method=str, alpha=float, dataset=str, metric=str, seed=int, value=float, kind="id"|"ood")``
with ``value`` a fraction in [0, 1] (top-1 accuracy 0.762, not 76.2).

Conventions (the choices the protocol leaves open):
- The ID column shows ``metric``, the OOD columns ``ood_metric`` (default: the same), so a task
  whose official OOD metric differs (FMoW: top-1 ID, worst-region accuracy OOD) is tabulated as
  its papers do.
- Average OOD is the plain mean, in probability space, over the explicit ``ood_datasets`` list,
  per seed (as in WiSE-FT). OOD records of other datasets stay out of the table and are named
  in report.md.
- Effective robustness (Taori et al., 2020; WiSE-FT) is ``avg OOD - sigmoid(slope * logit(ID)
  + intercept)`` per seed, in points, against a fixed `Baseline`: a line fitted once on logit
  axes, ``logit(p) = log(p / (1 - p))`` with p clipped to [1e-4, 1 - 1e-4], through a testbed of
  models trained without the robust pretraining (`wlsft_jax.testbed`). It depends on a model's
  own numbers only, never on which other models share the report. Without a baseline for the
  task the column reads "n/a".
- Over several seeds a cell reads "mean ± std" with the sample std (ddof=1); one seed shows the
  value alone. Cells are percentages with one decimal; effective robustness is in points.
- TensorBoard: ``writer.write_scalars(round(alpha * 100), ...)`` with seed-mean fractions named
  ``report/{method}/{dataset}/{metric}``, where dataset is the ID or an OOD dataset, ``avg_ood``
  or ``effective_robustness`` (named with the OOD metric). The caller owns (flushes, closes)
  the writer.
"""
import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, PercentFormatter

RECORD_FIELDS = ("method", "alpha", "dataset", "metric", "seed", "value", "kind")
KEY_FIELDS = ("method", "alpha", "dataset", "metric", "seed")
KINDS = ("id", "ood")
LOGIT_CLIP = 1e-4
STD_DDOF = 1
AVG_OOD = "avg_ood"
EFFECTIVE_ROBUSTNESS = "effective_robustness"
# Tick positions for the logit axes of the plot, dense in the middle as the scale is.
_ROUND_FRACTIONS = (0.01, 0.02, 0.05, *np.arange(0.1, 0.95, 0.1).round(1), 0.95, 0.98, 0.99)
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
    return _unique_records(records)


def logit(p):
    """log(p / (1 - p)) with p clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def _sigmoid(x):
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
        return _sigmoid(self.slope * logit(id_value) + self.intercept)

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


def _unique_records(records: Iterable[Mapping[str, Any]]) -> list[dict]:
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


def _kind_metrics(metric: str, ood_metric: str | None) -> dict[str, str]:
    """{"id": metric, "ood": ood_metric}, the OOD metric defaulting to the ID one."""
    return {"id": metric, "ood": ood_metric or metric}


def _metric_label(metrics: Mapping[str, str]) -> str:
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


def _build_rows(
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
    return _build_rows(_unique_records(records), id_dataset=id_dataset,
                       ood_datasets=list(ood_datasets), metrics=_kind_metrics(metric, ood_metric))


def _format_cell(values: np.ndarray, signed: bool = False) -> str:
    """Percent with one decimal: 'mean ± std' over seeds, the value alone for one seed."""
    rounded_mean = round(100 * float(np.mean(values)), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    mean = f"{rounded_mean:{'+' if signed else ''}.1f}"
    if len(values) == 1:
        return mean
    return f"{mean} ± {100 * np.std(values, ddof=STD_DDOF):.1f}"


def markdown_table(
    rows: Sequence[Row], *, id_dataset: str, ood_datasets: Sequence[str],
    metrics: Mapping[str, str] | None = None,
) -> str:
    """One line per (method, alpha): ID, each OOD set, average OOD, effective robustness.

    With `metrics` whose ID and OOD metrics differ, the ID and average-OOD headers name them.
    """
    id_header, ood_header = f"ID: {id_dataset}", f"Avg OOD ({len(ood_datasets)})"
    if metrics is not None and metrics["id"] != metrics["ood"]:
        id_header, ood_header = f"{id_header} [{metrics['id']}]", f"{ood_header} [{metrics['ood']}]"
    header = ["Method", "α", id_header, *ood_datasets, ood_header, "Eff. robustness"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.method, f"{row.alpha:g}"]
        cells += [_format_cell(row.columns[d]) for d in [id_dataset, *ood_datasets, AVG_OOD]]
        if EFFECTIVE_ROBUSTNESS in row.columns:
            cells.append(_format_cell(row.columns[EFFECTIVE_ROBUSTNESS], signed=True))
        else:
            cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_id_vs_ood(
    rows: Sequence[Row], baseline: Baseline | None, path, *, id_dataset: str,
    metrics: Mapping[str, str],
) -> None:
    """WiSE-FT-style figure: an alpha-curve per method on logit axes (seed means, ± one std
    over seeds as error bars), the testbed's models and baseline line, y = x."""
    figure = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.set_xscale("logit")
    ax.set_yscale("logit")

    def clip(p):
        return np.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP)

    points = [(x, y) for _, x, y in baseline.points] if baseline else []
    means = clip([[row.mean(id_dataset), row.mean(AVG_OOD)] for row in rows] + points)
    margin = 0.1 * np.ptp(logit(means)) + 0.05
    limits = _sigmoid([logit(means.min()) - margin, logit(means.max()) + margin])
    grid = _sigmoid(np.linspace(*logit(limits), 100))
    ax.plot(grid, grid, ":", color="gray", label="y = x")
    if baseline is not None:
        ax.plot(grid, clip(baseline.line.predict(grid)), "--", color="black",
                label="baseline: trained on ID only")
        ax.plot(*clip(np.array(points)).T, "x", color="black", ms=5)
    for method in sorted({row.method for row in rows}):
        curve = sorted((row for row in rows if row.method == method), key=lambda row: row.alpha)
        ids = clip([row.mean(id_dataset) for row in curve])
        oods = clip([row.mean(AVG_OOD) for row in curve])
        (drawn,) = ax.plot(ids, oods, "o-", label=method)
        if min(len(row.seeds) for row in curve) > 1:
            ax.errorbar(ids, oods, fmt="none", ecolor=drawn.get_color(), elinewidth=0.8,
                        xerr=[np.std(row.columns[id_dataset], ddof=STD_DDOF) for row in curve],
                        yerr=[np.std(row.columns[AVG_OOD], ddof=STD_DDOF) for row in curve])
        for row, x, y in zip(curve, ids, oods):  # Every alpha marked along its curve.
            ax.annotate(f"α={row.alpha:g}" if row.alpha in (0.0, 1.0) else f"{row.alpha:g}",
                        (x, y), textcoords="offset points", xytext=(4, 5), fontsize=7,
                        color=drawn.get_color())
    ticks = [p for p in _ROUND_FRACTIONS if limits[0] <= p <= limits[1]]
    for axis in (ax.xaxis, ax.yaxis):
        if len(ticks) >= 3:  # else the logit scale's own locator finds finer ticks
            axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(PercentFormatter(1.0))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel(f"ID {metrics['id']} ({id_dataset}), logit scale")
    ax.set_ylabel(f"Average OOD {metrics['ood']}, logit scale")
    seeds = max(len(row.seeds) for row in rows)
    spread = f" ± std over {seeds} seeds" if seeds > 1 else ""
    ax.set_title(f"ID vs average OOD {metrics['ood']}: means{spread} along alpha", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    with epath.Path(path).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)


def write_scalars(
    writer, rows: Sequence[Row], *, id_dataset: str, metrics: Mapping[str, str]
) -> None:
    """Seed means as `report/{method}/{dataset}/{metric}` at step round(alpha * 100), with the
    ID dataset's metric for its column and the OOD metric for every other column."""
    scalars_by_step = {}
    for row in rows:
        step = round(row.alpha * 100)
        scalars = scalars_by_step.setdefault(step, {})
        for dataset in row.columns:
            metric = metrics["id" if dataset == id_dataset else "ood"]
            name = f"report/{row.method}/{dataset}/{metric}"
            if name in scalars:
                raise ValueError(
                    f"{row.method} has two alphas at TensorBoard step {step} (step = "
                    "round(alpha * 100)); alphas need to be at least 0.01 apart."
                )
            scalars[name] = row.mean(dataset)
    for step in sorted(scalars_by_step):
        writer.write_scalars(step, scalars_by_step[step])


def write_report(
    records: Iterable[Mapping[str, Any]],
    out_dir: str,
    *,
    id_dataset: str,
    ood_datasets: Sequence[str],
    metric: str = "top1",
    ood_metric: str | None = None,
    baseline: Baseline | None = None,
    writer=None,
) -> str:
    """Writes results.json, results.csv, report.md and id_vs_ood.png; returns the table.

    Args:
      records: result records (module docstring); each key at most once.
      out_dir: created if missing.
      id_dataset: the in-distribution dataset.
      ood_datasets: the OOD datasets to show and average, explicitly; each needs records.
      metric: the metric whose records are tabulated and plotted (of the ID dataset, and of
        the OOD datasets unless ood_metric is given).
      ood_metric: the OOD datasets' metric when it differs, e.g. FMoW's "worst_region_top1".
      baseline: the fixed line effective robustness is measured against (None: "n/a").
      writer: optional clu MetricWriter that receives the table's numbers as scalars.
    """
    ood_datasets = list(ood_datasets)
    if not ood_datasets or len(set(ood_datasets)) < len(ood_datasets) or id_dataset in ood_datasets:
        raise ValueError(
            f"ood_datasets={ood_datasets} must be a non-empty list of distinct datasets without "
            f"the ID dataset {id_dataset!r}."
        )
    records = _unique_records(records)
    metrics = _kind_metrics(metric, ood_metric)
    rows = _build_rows(records, id_dataset=id_dataset, ood_datasets=ood_datasets, metrics=metrics)
    if baseline is not None:
        for row in rows:
            predicted = baseline.line.predict(row.columns[id_dataset])
            row.columns[EFFECTIVE_ROBUSTNESS] = row.columns[AVG_OOD] - predicted
    if writer is not None:  # first: a step clash is an error before any file is written
        write_scalars(writer, rows, id_dataset=id_dataset, metrics=metrics)

    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.json").open("w") as f:
        json.dump(records, f, indent=1)
    with (out_dir / "results.csv").open("w") as f:
        csv_writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        csv_writer.writeheader()
        csv_writer.writerows(records)
    table = markdown_table(rows, id_dataset=id_dataset, ood_datasets=ood_datasets,
                           metrics=metrics)
    excluded = sorted(
        {r["dataset"] for r in records if r["metric"] == metrics["ood"] and r["kind"] == "ood"}
        - set(ood_datasets)
    )
    with (out_dir / "report.md").open("w") as f:
        f.write(
            _report_markdown(
                table, rows, baseline, excluded, id_dataset=id_dataset,
                ood_datasets=ood_datasets, metrics=metrics,
            )
        )
    plot_id_vs_ood(
        rows, baseline, out_dir / "id_vs_ood.png", id_dataset=id_dataset, metrics=metrics
    )
    return table


def _report_markdown(
    table: str,
    rows: Sequence[Row],
    baseline: Baseline | None,
    excluded_ood: Sequence[str],
    *,
    id_dataset: str,
    ood_datasets: Sequence[str],
    metrics: Mapping[str, str],
) -> str:
    """report.md: what was measured and how, the table, and the plot."""

    def names(items):
        return ", ".join(f"`{item}`" for item in items) or "none"

    seed_counts = ", ".join(str(n) for n in sorted({len(row.seeds) for row in rows}))
    against = (f"{baseline.description}; {baseline.line}" if baseline is not None else
               "n/a: no testbed baseline for this task (config eval.baseline)")
    lines = [
        f"# Robustness report: {_metric_label(metrics)}",
        "",
        f"- ID: `{id_dataset}` ({metrics['id']}). OOD, averaged: {names(ood_datasets)} "
        f"({metrics['ood']}).",
        f"- OOD records left out of the average: {names(excluded_ood)}.",
        f"- Values in %, one decimal; mean ± std over seeds (ddof={STD_DDOF}); seeds per row: "
        f"{seed_counts}.",
        "- Effective robustness (points) = avg OOD − sigmoid(slope · logit(ID) + intercept), "
        f"the line of models trained without robust pretraining: {against}.",
        "",
        table,
        "![ID vs OOD](id_vs_ood.png)",
        "",
    ]
    return "\n".join(lines)


def plot_metric_vs_alpha(
    records: Iterable[Mapping[str, Any]],
    path,
    *,
    id_dataset: str,
    ood_datasets: Sequence[str],
    metric: str = "top1",
    ood_metric: str | None = None,
) -> None:
    """`metric` against alpha for each method: ID (solid), average OOD (dashed) and each OOD
    dataset (thin, named at its right end), seed means, with a band of one standard deviation
    over seeds around ID and average OOD when there are several; the weak-language-supervision
    figure of k-NN accuracy versus adapter alpha, and WiSE-FT's curves read along alpha. OOD
    curves show `ood_metric` when given (as in `write_report`)."""
    metrics = _kind_metrics(metric, ood_metric)
    rows = _build_rows(_unique_records(records), id_dataset=id_dataset,
                       ood_datasets=list(ood_datasets), metrics=metrics)
    figure = Figure(figsize=(6.5, 5.0))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for method in sorted({row.method for row in rows}):
        curve = sorted((row for row in rows if row.method == method), key=lambda row: row.alpha)
        alphas = [row.alpha for row in curve]
        (drawn,) = ax.plot(alphas, [row.mean(id_dataset) for row in curve], "o-",
                           label=f"{method}: ID ({id_dataset})")
        ax.plot(alphas, [row.mean(AVG_OOD) for row in curve], "s--", color=drawn.get_color(),
                label=f"{method}: average OOD")
        for column in (id_dataset, AVG_OOD):
            if min(len(row.seeds) for row in curve) > 1:
                means = np.array([row.mean(column) for row in curve])
                stds = np.array([np.std(row.columns[column], ddof=STD_DDOF) for row in curve])
                ax.fill_between(alphas, means - stds, means + stds, color=drawn.get_color(),
                                alpha=0.15, lw=0)
        for dataset in ood_datasets:
            values = [row.mean(dataset) for row in curve]
            ax.plot(alphas, values, "-", lw=0.7, alpha=0.5, color=drawn.get_color())
            ax.annotate(dataset, (alphas[-1], values[-1]), xytext=(3, 0),
                        textcoords="offset points", fontsize=7, va="center",
                        color=drawn.get_color())
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("alpha (0: pretrained, 1: tuned)")
    ax.set_ylabel(_metric_label(metrics))
    seeds = max(len(row.seeds) for row in rows)
    spread = f"; mean ± std over {seeds} seeds" if seeds > 1 else ""
    ax.set_title(f"{_metric_label(metrics)} vs alpha (thin: each OOD dataset{spread})",
                 fontsize=10)
    ax.set_xlim(min(row.alpha for row in rows) - 0.03, max(row.alpha for row in rows) + 0.12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    with epath.Path(path).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)
