"""Evaluators, looked up by type: a module of this package that defines `Evaluator`.

A config names the evaluators it runs in `config.evals`, as big_vision does: `{name: dict(
type=<module>, **settings)}`, e.g. `evals.accuracy = dict(type="zero_shot")`, `evals.knn =
dict(type="knn", ks=(10, 20))`. Every one scores every stage that is scored (any method whose
`SCORED_BY` lists its type), across WiSE-FT's alphas; `eval.report` names the one whose metrics
headline the report, watch training (`eval_every`) and score tuning. Adding one is adding a file.

An evaluator module holds:
- `SETTINGS`: its settings and their defaults (a setting left out of `config.evals.<name>`
  takes its default; one not listed is an error).
- `report_metric(settings, kind)` / `recorded_metrics(settings, config, dataset)`: the metric
  the report tabulates for the ID (kind "id") or the OOD datasets ("ood"), and those it records.
  Two evaluators of one config record different metrics (the ledger tells them apart by it).
- optionally `check(settings, config, name)`: checks of its own settings.
- `Evaluator(context, model, settings, eval_sets=None)`, whose `run(params, *, method, alpha,
  seed)` returns report records of every eval set of the task (or of `eval_sets`).
"""
import importlib
import pkgutil


def names() -> tuple[str, ...]:
    """Every evaluator's type."""
    return tuple(info.name for info in pkgutil.iter_modules(__path__)
                 if hasattr(importlib.import_module(f"{__name__}.{info.name}"), "Evaluator"))


def get(name: str):
    """The evaluator module `name`; ValueError naming the valid ones if there is none."""
    if name not in names():
        raise ValueError(f"Unknown evaluator type {name!r}; valid types: {list(names())}.")
    return importlib.import_module(f"{__name__}.{name}")


def settings(config, name: str) -> dict:
    """The settings of `config.evals.<name>`: its module's defaults, updated by the config."""
    given = config.evals[name]
    return {**get(given.type).SETTINGS, **{k: v for k, v in given.items() if k != "type"}}


def module_of(config, name: str):
    """The evaluator module of `config.evals.<name>`."""
    return get(config.evals[name].type)


def report_metric(config, kind: str, name: str | None = None) -> str:
    """The metric that `config.evals.<name>` (by default eval.report's) tabulates for the ID
    (kind "id") or the OOD datasets ("ood"), e.g. top-1, iWildCam's macro-F1, k-NN top-1."""
    name = name or config.eval.report
    return module_of(config, name).report_metric(settings(config, name), kind)
