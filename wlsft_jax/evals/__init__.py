"""Evaluators, looked up by name: a module of this package that defines `Evaluator`.

An evaluator module holds `Evaluator(context, model)`, whose `run(params, *, method, alpha,
seed)` returns report records, and `report_metric(config, kind)` / `recorded_metrics(config,
dataset)`, the metric the report tabulates and those it records; optionally `CONFIG_KEYS`, the
config keys (dotted) that only it reads. Adding one is adding a file.
"""
import importlib
import pkgutil


def names() -> tuple[str, ...]:
    """Every evaluator's name."""
    return tuple(info.name for info in pkgutil.iter_modules(__path__)
                 if hasattr(importlib.import_module(f"{__name__}.{info.name}"), "Evaluator"))


def get(name: str):
    """The evaluator module `name`; ValueError naming the valid ones if there is none."""
    if name not in names():
        raise ValueError(f"Unknown evaluator {name!r}; valid evaluators: {list(names())}.")
    return importlib.import_module(f"{__name__}.{name}")
