r"""The fixed baseline of effective robustness (Taori et al., 2020; WiSE-FT): a line on logit
axes through a testbed of models trained without the robust pretraining, fitted once.

A testbed file (`wlsft_jax/data/testbeds/<name>.json`, shipped, or any local / gs:// path)
holds the models' seed-mean points, the line and the command that made them:

  {"name": ..., "id_dataset": "photo", "ood_datasets": [...], "metric": "top1",
   "ood_metric": "top1", "points": [{"model": ..., "id": 0.71, "avg_ood": 0.38}, ...],
   "slope": ..., "intercept": ..., "command": ...}

`config.eval.baseline` names one; a report is measured against it when the report's ID dataset,
OOD datasets and metrics are the testbed's (else effective robustness reads "n/a" and a
warning says why). The embedded world's testbed ("world") is rebuilt by

  python -m wlsft_jax.main --config=configs/testbed_world.py
  python launch/fit_testbed.py --results=workdir/testbed_world/report/results.json \
      --out=wlsft_jax/data/testbeds/world.json
"""
from __future__ import annotations

import json

from etils import epath

from wlsft_jax import records as records_lib

TESTBEDS = epath.Path(__file__).parent / "data" / "testbeds"


def names() -> tuple[str, ...]:
    """The testbeds shipped in the package."""
    return tuple(sorted(path.stem for path in TESTBEDS.glob("*.json")))


def fit(records, *, id_dataset, ood_datasets=None, metric="top1", ood_metric=None) -> dict:
    """The testbed of `records` (every (method, alpha) row one model, seed means): its points
    and the least-squares line through them on logit axes. ood_datasets: by default every OOD
    dataset of the records."""
    ood_metric = ood_metric or metric
    if ood_datasets is None:
        ood_datasets = sorted({r["dataset"] for r in records if r["kind"] == "ood"})
    rows = records_lib.rows_of(records, id_dataset=id_dataset, ood_datasets=ood_datasets,
                          metric=metric, ood_metric=ood_metric)
    line = records_lib.fit_baseline_line(rows, id_dataset)
    return dict(id_dataset=id_dataset, ood_datasets=list(ood_datasets), metric=metric,
                ood_metric=ood_metric, slope=line.slope, intercept=line.intercept,
                points=[dict(model=row.method, id=row.mean(id_dataset),
                             avg_ood=row.mean(records_lib.AVG_OOD)) for row in rows])


def load(name_or_path: str) -> dict:
    """A shipped testbed by name, or a testbed file by path; ValueError naming the shipped
    ones when neither exists."""
    path = epath.Path(name_or_path)
    if not path.exists():
        path = TESTBEDS / f"{name_or_path}.json"
    if not path.exists():
        raise ValueError(f"Unknown testbed {name_or_path!r} (config eval.baseline): neither a "
                         f"file nor a shipped testbed; shipped: {list(names())}.")
    testbed = json.loads(path.read_text())
    testbed.setdefault("name", str(name_or_path))
    return testbed


def baseline(name_or_path, *, id_dataset, ood_datasets, metrics) -> tuple[
        records_lib.Baseline | None, str]:
    """(the report's Baseline, "") when the testbed measured this report's ID and OOD datasets in
    its metrics; (None, why not) otherwise, or with no testbed named."""
    if not name_or_path:
        return None, "no testbed named (config eval.baseline)"
    testbed = load(name_or_path)
    measured = (testbed["id_dataset"], sorted(testbed["ood_datasets"]), testbed["metric"],
                testbed["ood_metric"])
    wanted = (id_dataset, sorted(ood_datasets), metrics["metric"],
              metrics["ood_metric"] or metrics["metric"])
    if measured != wanted:
        return None, (f"testbed {testbed['name']!r} measured (ID, OOD, metric, OOD metric) = "
                      f"{measured}, this report {wanted}")
    description = (f"testbed {testbed['name']!r}, {len(testbed['points'])} models trained on "
                   f"{id_dataset} only")
    points = [(p["model"], p["id"], p["avg_ood"]) for p in testbed["points"]]
    line = records_lib.BaselineLine(testbed["slope"], testbed["intercept"])
    return records_lib.Baseline(line, points, description), ""
