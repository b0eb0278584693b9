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
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from wlsft_jax import plots
from wlsft_jax.records import (AVG_OOD, RECORD_FIELDS, STD_DDOF, Baseline, Row, build_rows,
                               kind_metrics, metric_label, unique_records)

EFFECTIVE_ROBUSTNESS = "effective_robustness"


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
    records = unique_records(records)
    metrics = kind_metrics(metric, ood_metric)
    rows = build_rows(records, id_dataset=id_dataset, ood_datasets=ood_datasets, metrics=metrics)
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
    plots.plot_id_vs_ood(
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
        f"# Robustness report: {metric_label(metrics)}",
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
