"""Hyperparameters chosen on the ID validation split, as the papers choose them.

A grid names stage keys and their values (`ft.optim.lr=1e-5,3e-5,1e-4`, `ft.steps=150,300`).
Each stage with grid keys is trained once per point of its grid (the product of its keys'
values), with seed `config.seed`, together with the stages it starts from (their chosen points:
stages are tuned in config order, so LP-FT starts from the LP chosen before it). A point's
score is the stage's periodic evaluation at its last step on the ID validation set
(`<point>/<stage>/eval_curve.jsonl`, "val/<id domain>" in the report's ID metric); no test
set is read. Each point is a workdir of its own (`<workdir>/<stage>/<point>/`, locked, resumable:
a rerun only trains what is missing). The result, `<workdir>/tuning.json` and `tuning.md`,
names the chosen point of each stage and the overrides that apply it to `wlsft_jax.main`.
"""
from __future__ import annotations

import ast
import copy
import itertools
import json
import os

from absl import logging
from etils import epath
from ml_collections.config_flags import config_path

from wlsft_jax import (checks, evals, experiment, methods, storage, train,
                       workdir as workdir_lib)
from wlsft_jax.data import tasks

RESULT = "tuning.json"


def parse_grid(specs, config) -> dict[str, dict[str, list]]:
    """["ft.optim.lr=1e-5,3e-5", ...] -> {"ft": {"optim.lr": [1e-5, 3e-5]}}, each key checked
    against the config (a stage of config.stages, a key the stage has)."""
    grid = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        stage, _, rest = key.partition(".")
        if not sep or not rest or not values:
            raise ValueError(f"--grid={spec!r}: expected <stage>.<key>=<value>,<value>,... "
                             "(e.g. ft.optim.lr=1e-5,3e-5).")
        checks.choice(stage, tuple(config.stages), f"stage in --grid={spec!r}")
        if not methods.get(config[stage].method).SCORED_BY:
            raise ValueError(f"--grid={spec!r}: stage {stage!r} (method "
                             f"{config[stage].method!r}) has no evaluator to score it on the "
                             "validation split; tune the stages after it.")
        missing = checks.missing_key(config[stage], rest, where=f"config.{stage}")
        if missing:
            key, where, valid = missing
            raise ValueError(f"Unknown config key {key!r} in {where}; valid keys: {valid}.")
        grid.setdefault(stage, {})[rest] = [_literal(v) for v in values.split(",")]
    return grid


def _literal(text: str):
    """'3e-5' -> 3e-05, '150' -> 150, '(0.9,1.0)' -> (0.9, 1.0); anything else stays a str."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def point_name(point: dict) -> str:
    """{"optim.lr": 3e-05, "steps": 150} -> "optim.lr=3e-05,steps=150" (a directory name)."""
    return ",".join(f"{key}={value}" for key, value in point.items()) or "default"


def _chain(config, stage: str) -> list[str]:
    """`stage` and the stages it starts from, in config order."""
    stages = list(config.stages)
    index = stages.index(stage)
    source = config[stage].get("input") or (stages[index - 1] if index else None)
    if source in (None, checks.INITIAL_WEIGHTS):
        return [stage]
    return [*_chain(config, source), stage]


def point_config(config, stage: str, point: dict, chosen: dict[str, dict]):
    """The config that trains `stage` at `point` (one seed, its chain at the chosen points,
    evaluated on the validation set at its last step)."""
    chain = _chain(config, stage)
    tuned = copy.deepcopy(config)
    with tuned.unlocked():
        for name in config.stages:
            if name not in chain:
                del tuned[name]
        tuned.stages = tuple(chain)
        tuned.num_seeds = 1
        for name in chain:  # Set as the command-line override --config.<name>.<key> would.
            for key, value in (point if name == stage else chosen.get(name, {})).items():
                config_path.set_value(f"{name}.{key}", tuned, value)
        if methods.trains_by_loop(tuned[stage].method):  # (`lp` scores its one fit.)
            tuned[stage].eval_every = tuned[stage].get("eval_every") or tuned[stage].steps
    return tuned


def run(config, grid, *, workdir: epath.Path, mesh) -> dict:
    """Trains every point of `grid` (from `parse_grid`) and chooses each stage's best on the
    validation set; returns (and writes) {stage: {"points": [...], "chosen": point}}."""
    val_key = f"{tasks.VAL}/{config.data.id_domain}"
    result = {}
    chosen = {}
    for stage in (name for name in config.stages if name in grid):
        keys = list(grid[stage])
        points = []
        for values in itertools.product(*(grid[stage][key] for key in keys)):
            point = dict(zip(keys, values))
            tuned = point_config(config, stage, point, chosen)
            point_dir = workdir / stage / point_name(point)
            with workdir_lib.claim(point_dir, tuned):
                writer = storage.create_writer(point_dir / "tensorboard")
                logging.info("Tuning %s at %s.", stage, point_name(point))
                experiment.run(tuned, workdir=point_dir, mesh=mesh, writer=writer,
                               evaluate=False)
                writer.close()
            last = train.read_eval_curve(point_dir / stage)[-1]
            points.append(dict(point=point, val=last[val_key], step=last["step"],
                               workdir=os.fspath(point_dir)))
            logging.info("%s at %s: %s %.4f", stage, point_name(point), val_key, last[val_key])
        best = max(points, key=lambda p: p["val"])  # The first of equals: grid order.
        chosen[stage] = best["point"]
        result[stage] = dict(points=points, chosen=best["point"])
    write(result, workdir, metric=f"{val_key} {evals.report_metric(config, tasks.ID)}")
    return result


def overrides(result) -> str:
    """The command-line overrides that apply the chosen points to the config."""
    return " ".join(f"--config.{stage}.{key}={value}" for stage, entry in result.items()
                    for key, value in entry["chosen"].items())


def write(result, workdir: epath.Path, *, metric: str) -> None:
    """tuning.json and tuning.md (a table per stage, the chosen point marked)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RESULT).write_text(json.dumps(result, indent=1))
    lines = [f"# Hyperparameters chosen on {metric}", ""]
    for stage, entry in result.items():
        keys = list(entry["chosen"])
        lines += [f"## {stage}", "", "| " + " | ".join([*keys, "val", ""]) + " |",
                  "|" + "---|" * (len(keys) + 2)]
        for p in entry["points"]:
            mark = "chosen" if p["point"] == entry["chosen"] else ""
            lines.append("| " + " | ".join([*(str(p["point"][k]) for k in keys),
                                            f"{100 * p['val']:.1f}", mark]) + " |")
        lines.append("")
    lines += ["Apply with:", "", "    " + overrides(result), ""]
    (workdir / "tuning.md").write_text("\n".join(lines))
