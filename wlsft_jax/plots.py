"""The report's figures: the ID-vs-OOD plot on logit axes (WiSE-FT's) and a metric against
alpha, both drawn from `records.Row`s (seed means, one standard deviation over seeds)."""
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, PercentFormatter

from wlsft_jax.records import (AVG_OOD, LOGIT_CLIP, STD_DDOF, Baseline, Row, build_rows,
                               kind_metrics, logit, metric_label, sigmoid, unique_records)

# Tick positions for the logit axes of the plot, dense in the middle as the scale is.
_ROUND_FRACTIONS = (0.01, 0.02, 0.05, *np.arange(0.1, 0.95, 0.1).round(1), 0.95, 0.98, 0.99)


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
    limits = sigmoid([logit(means.min()) - margin, logit(means.max()) + margin])
    grid = sigmoid(np.linspace(*logit(limits), 100))
    ax.plot(grid, grid, ":", color="gray", label="y = x")
    if baseline is not None:
        ax.plot(grid, clip(baseline.line.predict(grid)), "--", color="black",
                label="baseline: trained on ID only")
        ax.plot(*clip(np.array(points)).T, "x", color="black", ms=5)
    curves = {method: sorted((row for row in rows if row.method == method),
                             key=lambda row: row.alpha)
              for method in sorted({row.method for row in rows})}
    # Every alpha is a marker; with more than two curves only 0.5 and 1 are named (alpha 0, the
    # pretrained model, is every curve's start), else every alpha is.
    named = (0.5, 1.0) if sum(len(curve) > 1 for curve in curves.values()) > 2 else None
    for method, curve in curves.items():
        ids = clip([row.mean(id_dataset) for row in curve])
        oods = clip([row.mean(AVG_OOD) for row in curve])
        (drawn,) = ax.plot(ids, oods, "o-", label=method)
        if min(len(row.seeds) for row in curve) > 1:
            ax.errorbar(ids, oods, fmt="none", ecolor=drawn.get_color(), elinewidth=0.8,
                        xerr=[np.std(row.columns[id_dataset], ddof=STD_DDOF) for row in curve],
                        yerr=[np.std(row.columns[AVG_OOD], ddof=STD_DDOF) for row in curve])
        for row, x, y in zip(curve, ids, oods):
            if len(curve) > 1 and (named is None or row.alpha in named):
                label = f"α={row.alpha:g}" if row.alpha in (0.0, 0.5, 1.0) else f"{row.alpha:g}"
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, -3),
                            fontsize=7, color=drawn.get_color())
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
    metrics = kind_metrics(metric, ood_metric)
    rows = build_rows(unique_records(records), id_dataset=id_dataset,
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
        ends = []
        for dataset in ood_datasets if len(curve) > 1 else ():  # A lone point has no curve.
            values = [row.mean(dataset) for row in curve]
            ax.plot(alphas, values, "-", lw=0.7, alpha=0.5, color=drawn.get_color())
            ends.append((values[-1], dataset))
        shown = -np.inf
        for value, dataset in sorted(ends):  # Names at the right end, a line apart at least.
            shown = max(value, shown + 0.015)
            ax.annotate(dataset, (alphas[-1], shown), xytext=(3, 0), textcoords="offset points",
                        fontsize=7, va="center", color=drawn.get_color())
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("alpha (0: pretrained, 1: tuned)")
    ax.set_ylabel(metric_label(metrics))
    seeds = max(len(row.seeds) for row in rows)
    spread = f"; mean ± std over {seeds} seeds" if seeds > 1 else ""
    ax.set_title(f"{metric_label(metrics)} vs alpha (thin: each OOD dataset{spread})",
                 fontsize=10)
    ax.set_xlim(min(row.alpha for row in rows) - 0.03, max(row.alpha for row in rows) + 0.12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    with epath.Path(path).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)
