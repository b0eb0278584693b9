"""One experiment: tokenizer, models, starting weights, the stages in order, then ID/OOD accuracy.

Stages chain in one workdir: each stage's input is the previous stage's output (or the weights
named by `config.init`). A CLIP entering a classifier stage (ft / lp) becomes
`{"img": its image tower, "head": its zero-shot head}`, as in WiSE-FT; the CLIP that enters the
first fine-tuning stage is the "pretrained" model the results are compared with.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from wlsft_jax import (checkpoint, convert, interpolate, methods, pretrained, recipes, report,
                       sharding, train)
from wlsft_jax.data import pipeline, tasks, templates as templates_lib
from wlsft_jax.data import tokenizer as tokenizer_lib, world
from wlsft_jax.evals import knn, zero_shot
from wlsft_jax.evals.features import labelled_features
from wlsft_jax.models import classifier, two_towers, vit

ZERO_SHOT = "zeroshot"


def report_metric(config, kind: str = tasks.ID) -> str:
    """The metric the report tabulates for the ID (kind "id") or the OOD datasets ("ood"):
    `eval.report_metrics[kind]` (top-1, or a task's official metric such as iWildCam's
    macro-F1), or for WLS the k-NN top-1 at eval.knn_report_k."""
    if config[config.stages[-1]].method in (*methods.WLS_METHODS,
                                            *methods.SELF_SUPERVISED_METHODS):
        return f"knn{config.eval.knn_report_k}_top1"
    return config.eval.report_metrics[kind]


def write_report(config, records, directory, *, id_dataset, ood_datasets, writer=None) -> str:
    """The robustness report of `records` in the config's report metrics (`report_metric`):
    tables and the ID-vs-OOD plot (`report.write_report`) and the metric-vs-alpha plot,
    named after the metrics (top1_vs_alpha.png, top1_worst_region_top1_vs_alpha.png); returns
    the Markdown table."""
    datasets = dict(id_dataset=id_dataset, ood_datasets=ood_datasets)
    metrics = dict(metric=report_metric(config, tasks.ID),
                   ood_metric=report_metric(config, tasks.OOD))
    table = report.write_report(records, directory, **datasets, **metrics, writer=writer)
    plot_name = "_".join(dict.fromkeys(metrics.values()))
    report.plot_metric_vs_alpha(records, epath.Path(directory) / f"{plot_name}_vs_alpha.png",
                                **datasets, **metrics)
    return table


def check_names(config) -> None:
    """Unknown domains / datasets, and report metrics that a dataset does not record, are errors
    that list the valid ones (before anything is compiled or read)."""
    data = config.data
    tasks.check_names(data)
    if data.id_domain in data.ood_domains:
        raise ValueError(f"data.id_domain {data.id_domain!r} is also listed in data.ood_domains; "
                         "an OOD set must differ from the ID set.")
    if config[config.stages[-1]].method in (*methods.WLS_METHODS,
                                            *methods.SELF_SUPERVISED_METHODS):
        return
    for kind, names in ((tasks.ID, (data.id_domain,)), (tasks.OOD, tuple(data.ood_domains))):
        metric = report_metric(config, kind)
        for name in names:
            valid = tasks.eval_metrics(data, name)
            if metric not in valid:
                raise ValueError(f"eval.report_metrics.{kind}={metric!r} is not recorded for "
                                 f"{name!r}; its metrics: {list(valid)}.")


def build_tokenizer(config, workdir: epath.Path) -> tokenizer_lib.Tokenizer:
    """CLIP's BPE from the user's files, a text encoder's own tokenizer.json ("hf_json"), or the
    world's word-level tokenizer (kept in workdir)."""
    settings = config.tokenizer
    if settings.kind == "hf_json":
        return tokenizer_lib.from_tokenizer_json(
            epath.Path(config.text_encoder.path) / "tokenizer.json",
            context_length=settings.context_length)
    if settings.kind == "clip_bpe":  # Default: the files beside a Hugging Face CLIP checkpoint.
        folder = epath.Path(config.init.path or ".")
        return tokenizer_lib.clip_bpe(settings.vocab_path or folder / "vocab.json",
                                      settings.merges_path or folder / "merges.txt",
                                      context_length=settings.context_length)
    directory = workdir / "tokenizer"
    # Process 0 writes it once; the others wait at the barrier, so none reads a half-written one.
    if jax.process_index() == 0 and not directory.exists():
        tokenizer_lib.world_tokenizer(world.VOCABULARY,
                                      context_length=settings.context_length).save(directory)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("wlsft_jax: tokenizer saved")
    return tokenizer_lib.Tokenizer.load(directory)


def build_models(config, tokenizer, *, num_classes: int) -> dict:
    """The two-tower CLIP and the `num_classes`-way image classifier sharing its image tower's
    layout."""
    model = config.model
    image = dict(model.img, image_size=config.data.image_size, dtype_mm=model.dtype)
    if "txt" not in model:  # An image tower alone (dino).
        return {}
    text = dict(model.txt, vocab_size=tokenizer.vocab_size,
                context_length=tokenizer.context_length, eot_id=tokenizer.eot_id,
                dtype_mm=model.dtype)
    return {
        "clip": two_towers.Model(image=image, text=text, out_dim=model.embed_dim),
        "classifier": classifier.Model(img=dict(image, proj_dim=model.embed_dim),
                                       num_classes=num_classes),
    }


def initial_clip(config, models):
    """(models, params) of the CLIP `config.init` names; params None for "scratch".

    "hf_clip" replaces the models by the checkpoint's architecture; "orbax" reads the params of
    a stage directory of an earlier run (its latest checkpoint) into `config.model`'s layout.
    """
    init = config.init
    if init.format == "scratch":
        return models, None
    if init.format == "pretrained":
        clip_model, params, tokenizer = pretrained.load(init.name)
        if pretrained.read(init.name)[0]["vocabulary"] != list(world.VOCABULARY):
            raise ValueError(f"init.name={init.name!r} was trained on another caption grammar "
                             f"than data/world.py's; {pretrained.rebuild_hint(init.name)}.")
        if tokenizer.context_length != config.tokenizer.context_length:
            raise ValueError(f"init.name={init.name!r} reads {tokenizer.context_length} tokens, "
                             f"tokenizer.context_length is {config.tokenizer.context_length}; "
                             "remove the override.")
        clip_model, params = with_memory_levers(config.model, clip_model, params)
        image = dict(clip_model.image, proj_dim=clip_model.out_dim)
        return {"clip": clip_model, "classifier": models["classifier"].clone(img=image)}, params
    if init.format == "hf_clip":
        clip_model, params = convert.from_hf_clip(init.path, image_size=config.data.image_size,
                                                  dtype_mm=config.model.dtype)
        clip_model, params = with_memory_levers(config.model, clip_model, params)
        image = dict(clip_model.image, proj_dim=clip_model.out_dim)
        return {"clip": clip_model,
                "classifier": models["classifier"].clone(img=image)}, params
    if init.format == "orbax":
        manager = checkpoint.Checkpointer(init.path)
        step = manager.latest_step()
        if step is None:
            raise ValueError(f"init.path={init.path!r} holds no complete orbax checkpoint; give "
                             "a stage directory of an earlier run, e.g. workdir/pretrain.")
        data = config.data
        images = jnp.zeros((1, data.image_size, data.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, config.tokenizer.context_length), jnp.int32)
        shapes = nn.unbox(jax.eval_shape(models["clip"].init, jax.random.key(0), images,
                                         tokens)["params"])
        replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = manager.restore_params(step, checkpoint.restore_target(
            shapes, jax.tree.map(lambda _: replicated, shapes)))
        manager.close()
        return models, params
    raise ValueError(f"init.format={init.format!r} gives an image tower only (it serves method "
                     "'wls'); CLIP stages start from 'scratch', 'hf_clip' or 'orbax'.")


def with_memory_levers(model_config, clip_model, params):
    """A converted checkpoint's CLIP with `model.img` / `model.txt`'s scan and remat_policy, its
    params stacked for the towers that scan (the converters give the looped layout)."""
    towers = {}
    for key, field in (("img", "image"), ("txt", "text")):
        levers = {lever: model_config[key][lever] for lever in recipes.MEMORY_LEVERS
                  if lever in model_config[key]}
        towers[field] = dict(getattr(clip_model, field), **levers)
        if levers.get("scan"):
            params = {**params, key: vit.stack_layers(params[key])}
    return clip_model.clone(**towers), params


def make_evaluator(config, mesh, task, classifier_model):
    """(classifier_params, *, method, alpha, seed) -> report records: top-1/top-5 on every eval
    set of `task` (ID first), each scored through its logits transform, plus the set's metrics
    of every example's prediction (`EvalSet.metrics`, e.g. WILDS's macro-F1). The jitted counts
    are built once per distinct transform (and need of predictions) and reused for every call;
    sets without such metrics never move predictions to the host."""
    def counts_key(eval_set):
        return eval_set.logits_transform, bool(eval_set.metrics)

    counts_fns = {}
    for eval_set in task.eval_sets:
        transform, predictions = key = counts_key(eval_set)
        if key not in counts_fns:
            counts_fns[key] = zero_shot.jit_counts(classifier_model, transform,
                                                   predictions=predictions)

    def batches(eval_set):
        for batch in pipeline.eval_batches(eval_set.source, batch_size=config.eval.batch_size,
                                           operations=eval_set.operations,
                                           worker_count=task.eval_worker_count):
            yield sharding.put_batch(mesh, batch)

    def evaluate(classifier_params, *, method, alpha, seed):
        records = []
        for eval_set in task.eval_sets:
            values = zero_shot.accuracy(counts_fns[counts_key(eval_set)], classifier_params,
                                        batches(eval_set), metrics=eval_set.metrics)
            records += [dict(method=method, alpha=float(alpha), dataset=eval_set.name,
                             metric=metric, seed=seed, value=value, kind=eval_set.kind)
                        for metric, value in values.items()]
        return records

    return evaluate


def knn_evaluator(config, mesh, task, image_model):
    """(image_params, *, method, seed) -> report records of weighted k-NN (eval.knn_ks) on the
    final-norm class token: every eval set of `task` against its ID training set as the bank."""
    features_fn = jax.jit(lambda params, images: image_model.apply(
        {"params": params}, images)[1]["encoded"][:, 0])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    read = dict(batch_size=config.eval.batch_size, mesh=mesh, worker_count=task.eval_worker_count)

    def evaluate(image_params, *, method, seed):
        image_params = jax.device_put(image_params, replicated)
        bank, bank_labels = labelled_features(features_fn, image_params, task.train_eval_set,
                                              **read)
        records = []
        for eval_set in task.eval_sets:
            queries, labels = labelled_features(features_fn, image_params, eval_set, **read)
            accuracy = knn.knn_accuracy(bank, bank_labels, queries, labels,
                                        ks=tuple(config.eval.knn_ks),
                                        num_classes=len(task.class_names))
            records += [dict(method=method, alpha=1.0, dataset=eval_set.name,
                             metric=f"knn{k}_{name}", seed=seed, value=value, kind=eval_set.kind)
                        for k, values in accuracy.items() for name, value in values.items()]
        return records

    return evaluate


def periodic_values(records, metric) -> dict[str, float]:
    """{dataset: value} of `metric` in `records` (a stage's periodic evaluation)."""
    return {r["dataset"]: r["value"] for r in records if r["metric"] == metric}


def wise_ft_sweep(config, evaluate, head_fn, pretrained, fine_tuned, *, method, seed):
    """Records of `interpolate(theta0, theta1, alpha)` for every alpha in `config.eval.alphas`.

    theta0 is the pretrained CLIP's image tower with its zero-shot head. A fine-tuned classifier
    (FT, LP, LP-FT) is theta1 as it is; a fine-tuned CLIP (FLYP) is interpolated whole, both
    towers and the temperature, and the head is rebuilt from the interpolated text tower. alpha
    is traced: the interpolation and the evaluation each compile once for the whole sweep.
    `evaluate` is `make_evaluator`'s.
    """
    if "txt" in fine_tuned:
        mix = jax.jit(lambda alpha: as_classifier(
            interpolate.interpolate(pretrained, fine_tuned, alpha), head_fn))
    else:
        theta0 = as_classifier(pretrained, head_fn)
        mix = jax.jit(lambda alpha: interpolate.interpolate(theta0, fine_tuned, alpha))
    records = []
    for alpha in config.eval.alphas:
        records += evaluate(mix(alpha), method=method, alpha=alpha, seed=seed)
    return records


def as_classifier(clip_params, head_fn):
    """The image tower with the zero-shot head of the text tower, as WiSE-FT evaluates a CLIP."""
    return {"img": clip_params["img"], "head": head_fn(clip_params)}


def zero_shot_head_fn(config, clip_model, tokenizer, class_names):
    """Jitted clip_params -> the zero-shot head of `class_names` in eval.templates."""
    class_tokens = jnp.asarray(zero_shot.class_prompt_tokens(
        tokenizer, class_names, templates_lib.get_templates(config.eval.templates)))
    return jax.jit(lambda clip_params: zero_shot.zero_shot_head(clip_model, clip_params,
                                                                class_tokens))


def stage_workdir(workdir, name, seed, config):
    """Where stage `name` of `seed` trains: <workdir>/<name>[/seed<seed> with several seeds]."""
    return workdir / name if config.num_seeds == 1 else workdir / name / f"seed{seed}"


def run(config, *, workdir: epath.Path, mesh, writer) -> list[dict]:
    """Trains every stage of `config` in `workdir`, then evaluates; returns report records.

    Pretraining stages run once (seed `config.seed`); fine-tuning stages run for each of
    `config.num_seeds` seeds. Each stage starts from the output of `input` (default: the stage
    before it); every fine-tuning stage is then swept over WiSE-FT's alphas against the CLIP
    that pretraining produced, and reported under its stage name. A config whose last stage is
    `wls` runs `wls_experiment.run` instead (k-NN across adapter alphas).
    """
    if config[config.stages[-1]].method in methods.WLS_METHODS:
        from wlsft_jax import wls_experiment  # It builds on this module.
        return wls_experiment.run(config, workdir=workdir, mesh=mesh, writer=writer)
    tokenizer = build_tokenizer(config, workdir)
    task = tasks.build(config.data, seed=config.seed)
    models, pretrained = initial_clip(config, build_models(
        config, tokenizer, num_classes=len(task.class_names)))
    if models:
        head_fn = zero_shot_head_fn(config, models["clip"], tokenizer, task.class_names)
        evaluate = make_evaluator(config, mesh, task, models["classifier"])
    records = []
    for seed in range(config.seed, config.seed + config.num_seeds):
        outputs = {}
        for index, name in enumerate(config.stages):
            stage_config = config[name]
            method_name = stage_config.method
            source = stage_config.get("input") or (config.stages[index - 1] if index else None)
            params = outputs[source] if source else pretrained
            if method_name == "pretrain" and seed != config.seed:
                outputs[name] = pretrained
                continue
            if method_name in methods.CLASSIFIER_METHODS and "txt" in params:
                params = as_classifier(params, head_fn)
            elif method_name in methods.CONTRASTIVE_METHODS and params and "txt" not in params:
                raise ValueError(f"Stage {name!r} ({method_name}) trains a CLIP, but its input "
                                 "is an image classifier; give it a CLIP stage as input.")
            templates = templates_lib.get_templates(stage_config.get("templates", "simple"))
            method = methods.build(method_name, stage_config=stage_config, config=config,
                                   tokenizer=tokenizer, models=models,
                                   task=task, templates=templates)
            if params is None:
                params = method.init_params(mesh, seed)
            stage_seed = config.seed if method_name == "pretrain" else seed
            logging.info("Stage %s (seed %d): %s for %d steps.", name, stage_seed, method_name,
                         stage_config.steps)
            periodic_eval = None
            if method_name == "pretrain":
                periodic_eval = lambda params: periodic_values(evaluate(
                    as_classifier(params, head_fn), method=ZERO_SHOT, alpha=0.0, seed=seed),
                    "top1")
            elif method_name in methods.SELF_SUPERVISED_METHODS:
                evaluate_knn = knn_evaluator(config, mesh, task, method.model.image_tower())
                report_metric_name = report_metric(config)
                periodic_eval = lambda params: periodic_values(evaluate_knn(
                    params["teacher"]["img"], method=name, seed=seed), report_metric_name)
            outputs[name] = train.run(
                name=name, stage_config=stage_config, method=method, init_params=params,
                mesh=mesh, workdir=stage_workdir(workdir, name, stage_seed, config),
                seed=stage_seed, writer=writer, periodic_eval=periodic_eval)
            if method_name == "pretrain":
                pretrained = outputs[name]
            elif method_name in methods.SELF_SUPERVISED_METHODS:
                records += evaluate_knn(sharding.host_copy(outputs[name]["teacher"]["img"]),
                                        method=name, seed=seed)
            else:
                records += wise_ft_sweep(config, evaluate, head_fn, pretrained, outputs[name],
                                         method=name, seed=seed)
        if seed == config.seed and pretrained is not None:
            records += evaluate(as_classifier(pretrained, head_fn), method=ZERO_SHOT,
                                alpha=0.0, seed=seed)
    return records
