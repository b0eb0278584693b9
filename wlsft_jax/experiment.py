"""One experiment, whatever its methods: the stages in order for every seed, each fine-tuning
stage then scored by every evaluator of `config.evals` across WiSE-FT's alphas; the report.

Stages chain in one workdir: each stage's input is the previous stage's output (or the stage
named by `input`, or the weights named by `config.init` for the first). A stage whose method
runs once (pretraining: `pretrain`, `supervised`) trains with seed `config.seed` only, and its
output is the reference model: the fine-tuning stages after it start from it and are mixed with
it (alpha 0). Fine-tuning stages train for each of `config.num_seeds` seeds. A stage with no
reference (one that trains from scratch, e.g. `dino`) is scored as trained, at alpha 1. A CLIP
reference is also reported zero-shot, once, under ZERO_SHOT. A stage with `eval_every` is also
scored while it trains, by eval.report's evaluator, on the ID validation set and subsampled OOD
sets (`periodic_evaluation`). A stage is trained by its `train` (the training loop, or e.g. the
`lp` stage's L-BFGS fit).
"""
from __future__ import annotations

import functools

import jax
from absl import logging
from etils import epath

from wlsft_jax import (checks, context as context_lib, evals, interpolate, ledger as ledger_lib,
                       methods, plots, report, testbed)
from wlsft_jax.data import tasks

ZERO_SHOT = "zeroshot"


def write_report(config, records, directory, *, id_dataset, ood_datasets, writer=None) -> str:
    """The robustness report of `records`, one per evaluator of `config.evals`: eval.report's
    in `directory`, each other's in `directory/<its name>`. Each is the tables and ID-vs-OOD
    plot of `report.write_report` in the evaluator's metrics and the metric-vs-alpha plot named
    after them (top1_vs_alpha.png, knn20_top1_vs_alpha.png); returns eval.report's table."""
    datasets = dict(id_dataset=id_dataset, ood_datasets=ood_datasets)
    tables = {}
    for name in config.evals:
        metrics = dict(metric=evals.report_metric(config, tasks.ID, name),
                       ood_metric=evals.report_metric(config, tasks.OOD, name))
        baseline, why_not = testbed.baseline(config.eval.get("baseline"), **datasets,
                                             metrics=metrics)
        headline = name == config.eval.report
        if config.eval.get("baseline") and why_not and headline:
            logging.warning("No effective robustness in this report: %s.", why_not)
        out = epath.Path(directory) if headline else epath.Path(directory) / name
        # The headline's results.json keeps every record: it is the run's ledger.
        metrics_of_name = recorded_metrics(config, name)
        own = records if headline else [r for r in records if r["metric"] in metrics_of_name]
        tables[name] = report.write_report(own, out, **datasets, **metrics, baseline=baseline,
                                           writer=writer)
        plot_name = "_".join(dict.fromkeys(metrics.values()))
        plots.plot_metric_vs_alpha(own, out / f"{plot_name}_vs_alpha.png", **datasets, **metrics)
    return tables[config.eval.report]


def recorded_metrics(config, name) -> set[str]:
    """Every metric `config.evals.<name>` records, on any of the config's datasets."""
    module, settings = evals.module_of(config, name), evals.settings(config, name)
    data = config.data
    return {metric for dataset in (data.id_domain, *data.ood_domains)
            for metric in module.recorded_metrics(settings, config, dataset)}


def check_names(config) -> None:
    """Unknown domains / datasets / testbeds, report metrics that a dataset does not record and
    two evaluators recording one metric are errors that list the valid ones (before anything is
    compiled or read)."""
    data = config.data
    tasks.check_names(data)
    if config.eval.get("baseline"):  # An unknown testbed fails now, not after training.
        testbed.load(config.eval.baseline)
    if data.id_domain in data.ood_domains:
        raise ValueError(f"data.id_domain {data.id_domain!r} is also listed in data.ood_domains; "
                         "an OOD set must differ from the ID set.")
    owners = {}  # metric -> the evaluator that records it
    for name in config.evals:
        module, settings = evals.module_of(config, name), evals.settings(config, name)
        for kind, datasets in ((tasks.ID, (data.id_domain,)), (tasks.OOD, data.ood_domains)):
            metric = module.report_metric(settings, kind)
            for dataset in datasets:
                valid = module.recorded_metrics(settings, config, dataset)
                if metric not in valid:
                    raise ValueError(f"evals.{name} reports {metric!r} for the {kind} datasets, "
                                     f"which it does not record for {dataset!r}; its metrics "
                                     f"there: {list(valid)}.")
                for other in valid:
                    if owners.setdefault(other, name) != name:
                        raise ValueError(f"evals.{owners[other]} and evals.{name} both record "
                                         f"{other!r}; keep one of them (the report and the "
                                         "ledger tell evaluators apart by their metrics).")


def stage_workdir(workdir, name, seed, config):
    """Where stage `name` of `seed` trains: <workdir>/<name>[/seed<seed> with several seeds]."""
    return workdir / name if config.num_seeds == 1 else workdir / name / f"seed{seed}"


def wise_ft_records(config, evaluators, theta0, theta1, *, method, seed,
                    evaluated=lambda params: params, ledger=None) -> list[dict]:
    """The records of every evaluator of `evaluators` ({name: evaluator}) of
    `evaluated(interpolate(theta0, theta1, alpha))` for every alpha of eval.alphas. theta0 is
    the reference model in the stage's layout (e.g. a CLIP's image tower with its zero-shot head
    for a classifier stage). alpha is traced: the mix compiles once, and runs once per alpha
    for all evaluators. With a `ledger`, cells it holds are not evaluated again."""
    mix = jax.jit(lambda alpha: evaluated(interpolate.interpolate(theta0, theta1, alpha)))
    records = []
    for alpha in config.eval.alphas:
        mixed = functools.cache(functools.partial(mix, alpha))  # Once, if any cell is missing.
        for name, evaluator in evaluators.items():
            def evaluate(evaluator=evaluator, mixed=mixed, alpha=alpha):
                return evaluator.run(mixed(), method=method, alpha=alpha, seed=seed)
            records += recorded(ledger, config, name, evaluator, evaluate, method=method,
                                alpha=alpha, seed=seed)
    return records


def recorded(ledger, config, name, evaluator, evaluate, *, method, alpha, seed) -> list[dict]:
    """`evaluate()`'s records of (method, alpha, seed) by `config.evals.<name>` (`evaluator`)
    on its sets, or the ledger's when it holds them all (no ledger: always evaluated)."""
    if ledger is None:
        return evaluate()
    keys = [(method, float(alpha), s.name, seed) for s in evaluator.eval_sets]
    return ledger.cached(keys, recorded_metrics(config, name), evaluate)


def evaluators(config, context, model, *, periodic: bool = False) -> dict:
    """{name: the evaluator of config.evals.<name>} of a stage whose model is `model`, built
    once per stage so that their jitted functions compile once. periodic: only eval.report's,
    on the ID validation set and the OOD sets cut to eval.periodic_examples each (what watches
    training; never the ID test set)."""
    names = (config.eval.report,) if periodic else tuple(config.evals)
    eval_sets = (tasks.periodic_eval_sets(context.task, config.eval.periodic_examples)
                 if periodic else None)
    return {name: evals.module_of(config, name).Evaluator(
        context, model, evals.settings(config, name), eval_sets=eval_sets) for name in names}


def periodic_evaluation(config, evaluator, evaluated, *, method, seed):
    """params -> {"<kind>/<dataset>": the report's metric} of a stage while it trains, through
    its periodic evaluator (`evaluators(..., periodic=True)`): "val/photo", "ood/sketch", ..."""
    metrics = {tasks.VAL: evals.report_metric(config, tasks.ID),
               tasks.OOD: evals.report_metric(config, tasks.OOD)}

    def evaluate(params):
        records = evaluator.run(evaluated(params), method=method, alpha=1.0, seed=seed)
        return {f"{r['kind']}/{r['dataset']}": r["value"] for r in records
                if r["metric"] == metrics[r["kind"]]}

    return evaluate


def init_description(config) -> str:
    """What config.init names, e.g. "pretrained world_clip" or "orbax gs://b/run/pretrain"."""
    init = config.init
    what = init.get("name") if init.format == "pretrained" else init.get("path")
    return f"{init.format} {what}" if what else init.format


def run(config, *, workdir: epath.Path, mesh, writer, evaluate: bool = True) -> list[dict]:
    """Trains every stage of `config` in `workdir`, then evaluates; returns report records
    (none with evaluate=False: the stages only train, with their periodic evaluation)."""
    context = context_lib.Context(config, workdir=workdir, mesh=mesh, writer=writer)
    # Finished evaluations are kept as they finish: a rerun evaluates only what is missing.
    ledger = ledger_lib.Ledger(workdir / "report") if evaluate else None
    built = {}  # Stage name -> its built stage, evaluators and periodic evaluator.
    once = {}  # Outputs of the stages that run once.
    reference = context.initial_params
    records = []
    for seed in range(config.seed, config.seed + config.num_seeds):
        outputs = {}
        for index, name in enumerate(config.stages):
            stage_config = config[name]
            method = methods.get(stage_config.method)
            if method.RUNS_ONCE and name in once:
                outputs[name] = once[name]
                continue
            source = stage_config.get("input") or (config.stages[index - 1] if index else None)
            initial = source in (None, checks.INITIAL_WEIGHTS)
            params = context.initial_params if initial else outputs[source]
            if name not in built:
                stage = method.build(context, name, stage_config)
                model = stage.spec.model
                built[name] = (stage, {}, None) if not method.SCORED_BY else (
                    stage, evaluators(config, context, model),
                    evaluators(config, context, model, periodic=True)[config.eval.report])
            stage, scorers, periodic_evaluator = built[name]
            stage_seed = config.seed if method.RUNS_ONCE else seed
            logging.info("Stage %s (seed %d): %s%s.", name, stage_seed, stage_config.method,
                         f" for {stage_config.steps} steps" if "steps" in stage_config else "")
            start = stage.start(params, stage_seed)
            outputs[name] = stage.train(
                name=name, stage_config=stage_config, spec=stage.spec, init_params=start,
                mesh=mesh, workdir=stage_workdir(workdir, name, stage_seed, config),
                seed=stage_seed, writer=writer,
                periodic_eval=periodic_evaluator and periodic_evaluation(
                    config, periodic_evaluator, stage.evaluated, method=name, seed=stage_seed),
                init_source=init_description(config) if initial else f"stage {source}")
            if method.RUNS_ONCE:
                once[name] = reference = outputs[name]
            elif not evaluate:
                continue
            elif reference is None:
                trained = stage.evaluated(outputs[name])
                for scorer_name, scorer in scorers.items():
                    records += recorded(ledger, config, scorer_name, scorer, functools.partial(
                        scorer.run, trained, method=name, alpha=1.0, seed=seed),
                        method=name, alpha=1.0, seed=seed)
            else:
                theta0 = start if params is reference else stage.start(reference, seed)
                theta0 = jax.device_put(theta0, stage.spec.param_shardings(mesh))
                records += wise_ft_records(config, scorers, theta0, outputs[name],
                                           method=name, seed=seed, evaluated=stage.evaluated,
                                           ledger=ledger)
        if evaluate and seed == config.seed and reference is not None and "txt" in reference:
            for scorer_name, scorer in evaluators(config, context, context.models["clip"]).items():
                records += recorded(ledger, config, scorer_name, scorer, functools.partial(
                    scorer.run, reference, method=ZERO_SHOT, alpha=0.0, seed=seed),
                    method=ZERO_SHOT, alpha=0.0, seed=seed)
    return records
