"""One experiment, whatever its methods: the stages in order for every seed, each fine-tuning
stage then scored by its method's evaluator across WiSE-FT's alphas; the report.

Stages chain in one workdir: each stage's input is the previous stage's output (or the stage
named by `input`, or the weights named by `config.init` for the first). A stage whose method
runs once (pretraining: `pretrain`, `supervised`) trains with seed `config.seed` only, and its
output is the reference model: the fine-tuning stages after it start from it and are mixed with
it (alpha 0). Fine-tuning stages train for each of `config.num_seeds` seeds. A stage with no
reference (one that trains from scratch, e.g. `dino`) is scored as trained, at alpha 1. A CLIP
reference is also reported zero-shot, once, under ZERO_SHOT. A stage with `eval_every` is also
scored while it trains on the ID validation set and subsampled OOD sets (`periodic_evaluation`).
"""
from __future__ import annotations

import jax
from absl import logging
from etils import epath

from wlsft_jax import (checks, context as context_lib, evals, interpolate, ledger as ledger_lib,
                       methods, plots, report, testbed, train)
from wlsft_jax.data import tasks

ZERO_SHOT = "zeroshot"


def evaluator_name(config) -> str:
    """The evaluator that scores the config's results: its last stage method's ("zero_shot" for
    a config that only pretrains)."""
    return methods.get(config[config.stages[-1]].method).EVALUATOR or "zero_shot"


def report_metric(config, kind: str = tasks.ID) -> str:
    """The metric the report tabulates for the ID (kind "id") or the OOD datasets ("ood"), as
    the config's evaluator names it (e.g. top-1, iWildCam's macro-F1, k-NN top-1)."""
    return evals.get(evaluator_name(config)).report_metric(config, kind)


def write_report(config, records, directory, *, id_dataset, ood_datasets, writer=None) -> str:
    """The robustness report of `records` in the config's report metrics (`report_metric`):
    tables and the ID-vs-OOD plot (`report.write_report`) and the metric-vs-alpha plot,
    named after the metrics (top1_vs_alpha.png, top1_worst_region_top1_vs_alpha.png); returns
    the Markdown table."""
    datasets = dict(id_dataset=id_dataset, ood_datasets=ood_datasets)
    metrics = dict(metric=report_metric(config, tasks.ID),
                   ood_metric=report_metric(config, tasks.OOD))
    baseline, why_not = testbed.baseline(config.eval.get("baseline"), **datasets,
                                         metrics=metrics)
    if config.eval.get("baseline") and why_not:
        logging.warning("No effective robustness in this report: %s.", why_not)
    table = report.write_report(records, directory, **datasets, **metrics, baseline=baseline,
                                writer=writer)
    plot_name = "_".join(dict.fromkeys(metrics.values()))
    plots.plot_metric_vs_alpha(records, epath.Path(directory) / f"{plot_name}_vs_alpha.png",
                                **datasets, **metrics)
    return table


def check_names(config) -> None:
    """Unknown domains / datasets / testbeds, and report metrics that a dataset does not record,
    are errors that list the valid ones (before anything is compiled or read)."""
    data = config.data
    tasks.check_names(data)
    if config.eval.get("baseline"):  # An unknown testbed fails now, not after training.
        testbed.load(config.eval.baseline)
    if data.id_domain in data.ood_domains:
        raise ValueError(f"data.id_domain {data.id_domain!r} is also listed in data.ood_domains; "
                         "an OOD set must differ from the ID set.")
    evaluator = evals.get(evaluator_name(config))
    for kind, names in ((tasks.ID, (data.id_domain,)), (tasks.OOD, tuple(data.ood_domains))):
        metric = report_metric(config, kind)
        for name in names:
            valid = evaluator.recorded_metrics(config, name)
            if metric not in valid:
                raise ValueError(f"eval.report_metrics.{kind}={metric!r} is not recorded for "
                                 f"{name!r}; its metrics: {list(valid)}.")


def stage_workdir(workdir, name, seed, config):
    """Where stage `name` of `seed` trains: <workdir>/<name>[/seed<seed> with several seeds]."""
    return workdir / name if config.num_seeds == 1 else workdir / name / f"seed{seed}"


def wise_ft_records(config, evaluator, theta0, theta1, *, method, seed,
                    evaluated=lambda params: params, ledger=None) -> list[dict]:
    """The evaluator's records of `evaluated(interpolate(theta0, theta1, alpha))` for every
    alpha of eval.alphas. theta0 is the reference model in the stage's layout (e.g. a CLIP's
    image tower with its zero-shot head for a classifier stage). alpha is traced: the mix
    compiles once. With a `ledger`, an alpha whose cells it holds is not evaluated again."""
    mix = jax.jit(lambda alpha: evaluated(interpolate.interpolate(theta0, theta1, alpha)))
    records = []
    for alpha in config.eval.alphas:
        evaluate = lambda: evaluator.run(mix(alpha), method=method, alpha=alpha, seed=seed)
        records += recorded(ledger, evaluator, evaluate, method=method, alpha=alpha, seed=seed)
    return records


def recorded(ledger, evaluator, evaluate, *, method, alpha, seed) -> list[dict]:
    """`evaluate()`'s records of (method, alpha, seed) on the evaluator's sets, or the ledger's
    when it holds them all (`ledger.Ledger.cached`; no ledger: always evaluated)."""
    if ledger is None:
        return evaluate()
    keys = [(method, float(alpha), s.name, seed) for s in evaluator.eval_sets]
    return ledger.cached(keys, evaluate)


def evaluators(config, context, method, model):
    """(the evaluator of a stage of `method`, and its evaluator while it trains: on the ID
    validation set and the OOD sets cut to eval.periodic_examples each, never on the ID test
    set), built once per stage so that their jitted functions compile once; (None, None) for
    a method that is not scored."""
    if not method.EVALUATOR:
        return None, None
    evaluator = evals.get(method.EVALUATOR).Evaluator
    periodic_sets = tasks.periodic_eval_sets(context.task, config.eval.periodic_examples)
    return (evaluator(context, model),
            evaluator(context, model, eval_sets=periodic_sets))


def periodic_evaluation(config, evaluator, evaluated, *, method, seed):
    """params -> {"<kind>/<dataset>": the report's metric} of a stage while it trains, through
    its periodic evaluator (`evaluators`): "val/photo", "ood/sketch", ..."""
    metrics = {tasks.VAL: report_metric(config, tasks.ID),
               tasks.OOD: report_metric(config, tasks.OOD)}

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
    built = {}  # Stage name -> its built stage and evaluators, the same for every seed.
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
                built[name] = stage, *evaluators(config, context, method, stage.spec.model)
            stage, evaluator, periodic_evaluator = built[name]
            stage_seed = config.seed if method.RUNS_ONCE else seed
            logging.info("Stage %s (seed %d): %s for %d steps.", name, stage_seed,
                         stage_config.method, stage_config.steps)
            start = stage.start(params, stage_seed)
            outputs[name] = train.run(
                name=name, stage_config=stage_config, spec=stage.spec, init_params=start,
                mesh=mesh, workdir=stage_workdir(workdir, name, stage_seed, config),
                seed=stage_seed, writer=writer, periodic_eval=evaluator and periodic_evaluation(
                    config, periodic_evaluator, stage.evaluated, method=name, seed=stage_seed),
                init_source=init_description(config) if initial else f"stage {source}")
            if method.RUNS_ONCE:
                once[name] = reference = outputs[name]
            elif not evaluate:
                continue
            elif reference is None:
                trained = outputs[name]
                records += recorded(ledger, evaluator, lambda: evaluator.run(
                    stage.evaluated(trained), method=name, alpha=1.0, seed=seed),
                    method=name, alpha=1.0, seed=seed)
            else:
                theta0 = start if params is reference else stage.start(reference, seed)
                theta0 = jax.device_put(theta0, stage.spec.param_shardings(mesh))
                records += wise_ft_records(config, evaluator, theta0, outputs[name],
                                           method=name, seed=seed, evaluated=stage.evaluated,
                                           ledger=ledger)
        if evaluate and seed == config.seed and reference is not None and "txt" in reference:
            zero_shot = evals.get("zero_shot").Evaluator(context)
            records += recorded(ledger, zero_shot, lambda: zero_shot.run(
                reference, method=ZERO_SHOT, alpha=0.0, seed=seed),
                method=ZERO_SHOT, alpha=0.0, seed=seed)
    return records
