"""Sweeps checkpoints × WiSE-FT alphas × datasets into one robustness report, resumably
(the command line is launch/sweep.py).

A cell is one (checkpoint, alpha, dataset). Checkpoints are orbax stage directories of earlier
runs (their latest step; the params are a CLIP {img, txt, ...} or a classifier {img, head}),
or Hugging Face CLIP directories, local or gs:// alike, given as paths or globs. Each is mixed
against the pretrained CLIP (alpha 0) as the main run does (`experiment.wise_ft_records`: the
same mix and the same "zero_shot" evaluator), and reported under a
method name made of the trailing path parts that tell the checkpoints apart (runs/a/flyp and
runs/b/flyp -> a/flyp, b/flyp); the seed directories of one stage (flyp/seed0, flyp/seed1, as
wlsft_jax.main writes them with num_seeds > 1) are that stage's seeds in one report row. The
pretrained CLIP is --pretrained (an orbax stage directory or a Hugging Face CLIP directory),
else the config's `init`. The config also gives the data, the model layout, the tokenizer and
the evaluation settings; --datasets picks among its ID and OOD sets (default: all) and must keep
the ID set and one OOD set for the report.

Everything goes to --out: after each cell its records join `results.json` (rewritten whole
through a temporary file, so a kill loses at most the cell in flight); a rerun of the same
command skips the cells found there. A cell that raises is logged with its traceback and listed
in `failures.json`, the others go on, and the exit status is 1. The report of every complete
(method, alpha) row in results.json is written to `report/` (as `wlsft_jax.main` does).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from wlsft_jax import (checkpoint, checks, context as context_lib, convert, experiment,
                       interpolate, ledger as ledger_lib, sharding)
from wlsft_jax.evals import zero_shot

_GLOB_CHARACTERS = re.compile(r"[*?[]")
_SEED_DIRECTORY = re.compile(r"seed(\d+)")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One evaluation of the sweep: a checkpoint mixed at `alpha`, scored on `dataset`."""
    checkpoint: str
    alpha: float
    dataset: str
    method: str  # The checkpoint's name in the report.
    seed: int

    @property
    def key(self) -> tuple[str, float, str, int]:
        """What identifies the cell's records in results.json."""
        return self.method, self.alpha, self.dataset, self.seed


@dataclasses.dataclass
class Sweep:
    """A checked sweep: its config (with the pretrained CLIP in `init`), the method name and
    the seed of each checkpoint path, the alphas and the datasets (ID first)."""
    config: ml_collections.ConfigDict
    methods: dict[str, str]
    seeds: dict[str, int]
    alphas: tuple[float, ...]
    datasets: tuple[str, ...]
    # Mix checkpoints fine-tuned from another pretrained model than the sweep's (their
    # provenance says so) instead of refusing them.
    allow_other_pretrained: bool = False

    def cells(self) -> list[Cell]:
        return [Cell(path, alpha, dataset, method, self.seeds[path])
                for path, method in self.methods.items()
                for alpha in self.alphas for dataset in self.datasets]


@dataclasses.dataclass
class Outcome:
    """What one run of a sweep did: the cells it evaluated and those that failed."""
    evaluated: list[Cell]
    failures: list[dict]


def plan(config, *, checkpoints, alphas=None, datasets=None, pretrained=None,
         allow_other_pretrained=False) -> Sweep:
    """Checks every input and expands the checkpoint globs; reads no weights and no data.

    Raises ValueError naming the valid choices for a glob that matches nothing, an alpha outside
    [0, 1], an unknown dataset, or a config whose pretrained CLIP is unset.
    """
    config = config.copy_and_resolve_references()
    if pretrained:
        if not epath.Path(pretrained).is_dir():
            raise ValueError(f"--pretrained={pretrained!r} is not a directory; give an orbax "
                             "stage directory or a Hugging Face CLIP directory.")
        config.init.format, config.init.path = checkpoint_format(pretrained), pretrained
        config.init.name = None
    checks.check_config(config)
    experiment.check_names(config)
    report = config.eval.report
    if config.evals[report].type != "zero_shot":
        raise ValueError(f"This config's report is of evaluator evals.{report} (type "
                         f"{config.evals[report].type!r}), run by wlsft_jax.main; this sweep "
                         "takes CLIP configs scored zero-shot (e.g. configs/flyp_clip.py).")
    # The sweep scores with eval.report's zero-shot evaluator only.
    config.evals = ml_collections.ConfigDict({report: config.evals[report]})
    if config.init.format not in ("pretrained", "orbax", "hf_clip"):
        raise ValueError(f"The config's init.format={config.init.format!r} gives no pretrained "
                         "CLIP for alpha 0; pass --pretrained=<an orbax stage directory such as "
                         "workdir/pretrain_clip/pretrain, or a Hugging Face CLIP directory>.")
    paths = list(dict.fromkeys(path for pattern in checkpoints for path in expand(pattern)))
    if not paths:
        raise ValueError("No checkpoints given; pass --checkpoints=PATH_OR_GLOB[,...].")
    seeds = {path: split_seed(path)[1] for path in paths}
    return Sweep(config=config, methods=method_names(paths),
                 seeds={path: config.seed if seed is None else seed
                        for path, seed in seeds.items()},
                 alphas=parse_alphas(config.eval.alphas if alphas is None else alphas),
                 datasets=select_datasets(config.data, datasets),
                 allow_other_pretrained=allow_other_pretrained)


def checkpoint_format(path: str) -> str:
    """"hf_clip" for a Hugging Face directory (a config.json beside the weights), else "orbax"."""
    return "hf_clip" if (epath.Path(path) / "config.json").exists() else "orbax"


def expand(pattern: str) -> list[str]:
    """The directories `pattern` names: itself, or the matches of its glob (sorted).

    ValueError when there are none, listing what the deepest folder without a wildcard holds.
    """
    pattern = pattern.rstrip("/")
    parts = pattern.split("/")
    first_glob = next((i for i, part in enumerate(parts) if _GLOB_CHARACTERS.search(part)),
                      len(parts))
    if first_glob == len(parts):
        matches = [pattern] if epath.Path(pattern).is_dir() else []
        root = epath.Path(pattern).parent
    else:
        root = epath.Path("/".join(parts[:first_glob]) or ".")
        matches = sorted(os.fspath(path) for path in root.glob("/".join(parts[first_glob:]))
                         if path.is_dir())
    if not matches:
        present = sorted(path.name for path in root.iterdir()) if root.is_dir() else None
        raise ValueError(f"No checkpoint directory matches {pattern!r}; " + (
            f"{os.fspath(root)} holds {present}." if present is not None
            else f"{os.fspath(root)} does not exist."))
    return matches


def split_seed(path: str) -> tuple[str, int | None]:
    """(the run's stage directory, its seed) of a seed directory (`.../flyp/seed1`, as
    `wlsft_jax.main` writes with num_seeds > 1); (path, None) for any other path."""
    base, _, last = path.rpartition("/")
    match = _SEED_DIRECTORY.fullmatch(last)
    return (base, int(match[1])) if match and base else (path, None)


def method_names(paths: list[str]) -> dict[str, str]:
    """{path: the fewest trailing parts of its stage directory that no other one ends with};
    the seed directories of one stage share its name (they are seeds of one report row)."""
    bases = {path: split_seed(path)[0] for path in paths}
    unique = list(dict.fromkeys(bases.values()))
    parts = [base.split("/") for base in unique]

    def name(index):
        own = parts[index]
        for depth in range(1, len(own)):
            if all(other[-depth:] != own[-depth:] for other in parts if other is not own):
                return "/".join(own[-depth:])
        return unique[index]

    names = {base: name(index) for index, base in enumerate(unique)}
    return {path: names[base] for path, base in bases.items()}


def parse_alphas(values) -> tuple[float, ...]:
    """Distinct alphas in [0, 1] from numbers or strings ("0.5")."""
    alphas = []
    for value in values:
        try:
            alpha = float(value)
        except ValueError:
            raise ValueError(f"alpha {value!r} is not a number; give alphas in [0, 1], e.g. "
                             "--alphas=0,0.5,1.") from None
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha {alpha:g} is outside [0, 1] (0: the pretrained CLIP, 1: "
                             "the checkpoint); valid alphas lie in [0, 1].")
        alphas.append(alpha)
    if not alphas or len(set(alphas)) < len(alphas):
        raise ValueError(f"alphas {list(values)} must be distinct and at least one.")
    return tuple(alphas)


def select_datasets(data, names) -> tuple[str, ...]:
    """The chosen eval sets of the config (default all), ID first; the report needs the ID set
    and an OOD set."""
    valid = (data.id_domain, *data.ood_domains)
    names = tuple(names or valid)
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"Unknown dataset(s) {unknown}; valid datasets of this config: "
                         f"{list(valid)} (add others with --config.data.ood_domains).")
    if data.id_domain not in names or len(set(names)) < 2:
        raise ValueError(f"--datasets={list(names)} needs the ID dataset {data.id_domain!r} and "
                         f"at least one OOD dataset of {list(data.ood_domains)} for the report.")
    return tuple(name for name in valid if name in names)


def stable_names(out: epath.Path, names: dict[str, str]) -> dict[str, str]:
    """`names` ({path: method name}) with every stage directory named as an earlier run into
    `out` named it (`<out>/checkpoints.json`): a rerun whose globs match more checkpoints
    neither renames nor re-evaluates the finished ones. A new name that an earlier run gave
    another stage directory is a ValueError."""
    names_path = out / "checkpoints.json"
    earlier = json.loads(names_path.read_text()) if names_path.exists() else {}
    bases = {path: split_seed(path)[0] for path in names}
    names = {path: earlier.get(bases[path], name) for path, name in names.items()}
    owners = {name: base for base, name in earlier.items()}
    clashes = {bases[path]: f"{name!r}, already {owners[name]}'s"
               for path, name in names.items() if owners.get(name, bases[path]) != bases[path]}
    if clashes:
        raise ValueError(f"Checkpoints would take names that {names_path} gives other "
                         f"checkpoints: {clashes}; sweep them into another --out.")
    ledger_lib.write_json(names_path, {**earlier, **{bases[p]: n for p, n in names.items()}})
    return names


def run(sweep: Sweep, *, out, mesh) -> Outcome:
    """Evaluates the cells missing from `<out>/results.json`, then writes the report."""
    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (out / "config.json").write_text(sweep.config.to_json_best_effort(indent=2))
    ledger = ledger_lib.Ledger(out)
    sweep = dataclasses.replace(sweep, methods=stable_names(out, sweep.methods))
    cells = sweep.cells()
    metrics = experiment.recorded_metrics(sweep.config, sweep.config.eval.report)
    pending = [cell for cell in cells if not ledger.done(cell.key, metrics)]
    logging.info("Sweep of %d cells (%d checkpoints x %d alphas x %d datasets): %d finished "
                 "earlier, %d to evaluate.", len(cells), len(sweep.methods), len(sweep.alphas),
                 len(sweep.datasets), len(cells) - len(pending), len(pending))
    if pending:
        _evaluate(sweep, pending, ledger, out=out, mesh=mesh)
    ledger.write_failures()  # Also clears the failures of an earlier run.
    _write_report(sweep, ledger.records, out / "report")
    for failure in ledger.failures:
        logging.error("Failed: %s alpha=%g on %s: %s", failure["method"], failure["alpha"],
                      failure["dataset"], failure["error"])
    return Outcome(evaluated=[cell for cell in pending if ledger.done(cell.key, metrics)],
                   failures=ledger.failures)


def _evaluate(sweep: Sweep, pending: list[Cell], ledger: ledger_lib.Ledger, *, out,
              mesh) -> None:
    """Evaluates `pending`, recording each cell's records or its failure.

    Each checkpoint is read once; its mix with the pretrained CLIP at a traced alpha compiles
    once per kind (CLIP or classifier) for the whole sweep. Alpha 0 is the pretrained zero-shot
    model whatever the checkpoint: each dataset evaluates it once, and every checkpoint's alpha-0
    cell records those values under its own name.
    """
    config = sweep.config
    context = context_lib.Context(config, workdir=out, mesh=mesh)
    targets = _restore_targets(config, context.models, context.tokenizer, mesh)
    if not sweep.allow_other_pretrained:
        checkpoint.check_provenance(
            sorted({cell.checkpoint for cell in pending if checkpoint_format(cell.checkpoint)
                    == "orbax"}),
            checkpoint.tree_sha256(context.initial_params["img"]),
            experiment.init_description(config))
    pretrained = jax.device_put(context.initial_params, _shardings(targets["clip"]))
    # A CLIP is mixed whole (its head then rebuilt from the mixed text tower); a classifier is
    # mixed against the pretrained image tower with its zero-shot head, as in the main run.
    zero_shot_classifier = zero_shot.as_classifier(pretrained, context.head_fn)
    mix = jax.jit(interpolate.interpolate)
    eval_sets = {eval_set.name: eval_set for eval_set in context.task.eval_sets}
    evaluators = {name: zero_shot.Evaluator(context, eval_sets=(eval_sets[name],))
                  for name in sweep.datasets}

    zero_shot_records = {}  # dataset -> the alpha-0 records, evaluated once.

    def evaluate(cell, params):
        if cell.alpha == 0:
            if cell.dataset not in zero_shot_records:
                zero_shot_records[cell.dataset] = evaluators[cell.dataset].run(
                    zero_shot_classifier, method=cell.method, alpha=0.0, seed=cell.seed)
            return [dict(record, method=cell.method, seed=cell.seed)
                    for record in zero_shot_records[cell.dataset]]
        return evaluators[cell.dataset].run(params, method=cell.method, alpha=cell.alpha,
                                            seed=cell.seed)

    numbered = enumerate(pending, 1)
    for path, group in itertools.groupby(numbered, key=lambda item: item[1].checkpoint):
        group = list(group)
        try:
            logging.info("Reading %s (%s).", path, group[0][1].method)
            fine_tuned = load_checkpoint(path, config, targets)
        except Exception as error:  # A broken checkpoint fails its own cells only.
            logging.exception("Checkpoint %s failed to load; its %d cell(s) fail.", path,
                              len(group))
            for _, cell in group:
                ledger.fail(dataclasses.asdict(cell), error)
            continue
        mixed_alpha, params = None, None
        for number, cell in group:
            try:
                if cell.alpha not in (mixed_alpha, 0):
                    alpha = jnp.float32(cell.alpha)
                    theta0 = pretrained if "txt" in fine_tuned else zero_shot_classifier
                    params = mix(theta0, fine_tuned, alpha)
                    mixed_alpha = cell.alpha
                records = evaluate(cell, params)
            except Exception as error:  # One broken cell must not stop the others.
                logging.exception("Cell %d/%d (%s alpha=%g on %s) failed.", number,
                                  len(pending), cell.method, cell.alpha, cell.dataset)
                ledger.fail(dataclasses.asdict(cell), error)
                continue
            ledger.add(records)
            logging.info("Cell %d/%d: %s alpha=%g on %s: %s.", number, len(pending),
                         cell.method, cell.alpha, cell.dataset,
                         ", ".join(f"{r['metric']} {r['value']:.2%}" for r in records))
        del fine_tuned, params  # Before the next checkpoint is read.


def _shardings(target):
    return jax.tree.map(lambda leaf: leaf.sharding, target)


def _restore_targets(config, models, tokenizer, mesh) -> dict:
    """Shapes and shardings on `mesh` of a CLIP's and of a classifier's params."""
    size = config.data.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, tokenizer.context_length), jnp.int32)
    targets = {}
    for name, inputs in (("clip", (images, tokens)), ("classifier", (images,))):
        boxed = jax.eval_shape(models[name].init, jax.random.key(0), *inputs)["params"]
        targets[name] = checkpoint.restore_target(nn.unbox(boxed),
                                                  sharding.logical_shardings(mesh, boxed))
    return targets


def load_checkpoint(path: str, config, targets: dict) -> dict:
    """The params of a Hugging Face CLIP directory or of an orbax stage directory's latest
    checkpoint (a CLIP or a classifier, told apart by its metadata), placed as `targets` say."""
    if checkpoint_format(path) == "hf_clip":
        model, params = convert.from_hf_clip(path, image_size=config.data.image_size,
                                             dtype_mm=config.model.dtype)
        _, params = context_lib.with_memory_levers(config.model, model, params)
        return jax.device_put(params, _shardings(targets["clip"]))
    with checkpoint.Checkpointer(path) as manager:
        step = manager.latest_step()
        if step is None:
            raise ValueError(f"{path} holds no complete orbax checkpoint (nor a Hugging Face "
                             "config.json); give a stage directory of an earlier run.")
        names = manager.param_names(step)
        kind = "clip" if "txt" in names else "classifier" if names == ["head", "img"] else None
        if kind:
            try:
                return manager.restore_params(step, targets[kind])
            except Exception as error:
                raise ValueError(f"{path} step {step} does not restore "
                                 f"({checkpoint.error_line(error)}); rerun its training "
                                 "command, which sets a damaged step aside.") from error
    raise ValueError(f"{path} (step {step}) holds params {names}; a sweep reads a CLIP "
                     "({img, txt, ...}) or a classifier ({head, img}).")


def _write_report(sweep: Sweep, records: list[dict], directory: epath.Path) -> None:
    """The report of every (method, alpha) row that has records on all the sweep's datasets,
    in the config's report metrics (as `wlsft_jax.main` writes it)."""
    records = [r for r in records if r["dataset"] in sweep.datasets]
    datasets_of = collections.defaultdict(set)
    for r in records:
        datasets_of[r["method"], r["alpha"]].add(r["dataset"])
    records = [r for r in records
               if datasets_of[r["method"], r["alpha"]] == set(sweep.datasets)]
    if not records:
        logging.error("No (method, alpha) has results on every dataset of %s; no report.",
                      list(sweep.datasets))
        return
    if jax.process_index() != 0:
        return
    id_dataset, *ood_datasets = sweep.datasets
    table = experiment.write_report(sweep.config, records, directory, id_dataset=id_dataset,
                                    ood_datasets=ood_datasets)
    print(table)
