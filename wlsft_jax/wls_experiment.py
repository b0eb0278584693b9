"""Weak language supervision end to end: vision encoder, text encoder, the `wls` stage, then
weighted k-NN of the vision encoder across adapter alphas.

The vision encoder is a Hugging Face ViT (`init.format="hf_vit"`, e.g. DINO ViT-B/16) or, on the
embedded world, the image tower trained by the one stand-in stage before `wls` (e.g. method
`supervised` on the domain label: an encoder that was never taught shape). The text encoder is a
Hugging Face BERT (`text_encoder.path`, e.g. all-MiniLM-L6-v2) read with its own tokenizer;
frozen by default, when its features of every caption are computed once, before training (a
schedule that trains `txt/...` runs it at every step instead).

Multi-host: every array brought to the host (trained params, features) is whole on every process
(`sharding.host_copy`), so every process computes the same k-NN; only process 0 writes (main).

The adapters start as the identity (Token Replay's tokens from the pretrained class token), so
`theta(alpha) = interpolate(theta_init, theta_trained, alpha)` over the trained leaves (adapters
and projection) is exactly the pretrained encoder at alpha = 0. Each alpha is scored by DINO's
weighted k-NN: the ID training images are the feature bank, the ID and every OOD eval set the
queries; records carry metrics `knn{k}_top1` / `knn{k}_top5`.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from etils import epath

from wlsft_jax import (convert, experiment, interpolate, methods, optim, pretrained, sharding,
                       train)
from wlsft_jax.data import captions, pipeline, tasks, transforms
from wlsft_jax.evals import knn
from wlsft_jax.evals.features import features, labelled_features
from wlsft_jax.models import adapters, classifier, wls

# eval.representation -> the features k-NN compares, from the image tower's (features, out).
REPRESENTATIONS = {
    "cls": lambda features, out: out["encoded"][:, 0],  # Final-norm class token (DINO's k-NN).
    "features": lambda features, out: features,  # Projected into the text encoder's space.
}


def module_fields(module: nn.Module, drop=("proj_dim", "num_classes")) -> dict:
    """A model's configuration fields as a dict, without `drop` (WLS sets projection itself)."""
    return {field.name: getattr(module, field.name) for field in dataclasses.fields(module)
            if field.name not in ("parent", "name", *drop)}


def merged(init: dict, pretrained: dict, where: str = "") -> dict:
    """`init` with every leaf that `pretrained` holds replaced by the pretrained one.

    Leaves only in `init` (adapters, projection) keep their init; a pretrained leaf that `init`
    lacks, or of another shape, is a ValueError naming it.
    """
    out = dict(init)
    for key, value in pretrained.items():
        path = f"{where}/{key}" if where else key
        if key not in init:
            raise ValueError(f"Pretrained param {path} has no place in the WLS model; is it the "
                             "same architecture?")
        if isinstance(value, dict):
            out[key] = merged(init[key], value, path)
        elif np.shape(value) != np.shape(init[key]):
            raise ValueError(f"Pretrained param {path} has shape {np.shape(value)}, the WLS "
                             f"model's {np.shape(init[key])}.")
        else:
            out[key] = value
    return out


def vision_encoder(config, *, task, tokenizer, mesh, workdir, writer) -> tuple[dict, dict]:
    """(vit.Model fields, params) of the pretrained vision encoder: the Hugging Face ViT of
    init.path, or the image tower of the stand-in stage before `wls`, trained here."""
    if config.init.format == "hf_vit":
        model, params = convert.from_hf_vit(config.init.path, image_size=config.data.image_size,
                                            dtype_mm=config.model.dtype)
        return module_fields(model), params
    if config.init.format == "pretrained":
        model, params, _ = pretrained.load(config.init.name)
        return module_fields(model), params
    name = config.stages[0]
    stage = config[name]
    image = dict(config.model.img, image_size=config.data.image_size, dtype_mm=config.model.dtype)
    num_classes = len(methods.label_names(stage.get("label_key", "label"), task))
    method = methods.build(stage.method, stage_config=stage, config=config, tokenizer=tokenizer,
                           models={"classifier": classifier.Model(img=image,
                                                                   num_classes=num_classes)},
                           task=task, templates=())
    logging.info("Stage %s: %s for %d steps (the stand-in vision encoder).", name, stage.method,
                 stage.steps)
    params = train.run(name=name, stage_config=stage, method=method,
                       init_params=method.init_params(mesh, config.seed), mesh=mesh,
                       workdir=experiment.stage_workdir(workdir, name, config.seed, config),
                       seed=config.seed, writer=writer)
    return image, sharding.host_copy(params["img"])


def initial_params(method, *, vision_params, text_params, replay_images, seed) -> dict:
    """The WLS model's params: pretrained encoders, identity adapters (Token Replay's tokens from
    the pretrained class token on `replay_images`), a fresh projection and temperature."""
    example_inputs = [x[:1] for x in method.example_inputs]
    init = jax.jit(lambda rng: nn.unbox(method.model.init(rng, *example_inputs)["params"]))
    params = sharding.host_copy(init(jax.random.key(seed)))
    image_params = merged(params["img"], vision_params, "img")
    image_tower = method.model.towers()[0]
    if image_tower.adapter["name"] == "token_replay":
        image_params = adapters.init_replay_tokens(image_tower, image_params, replay_images,
                                                   rng=jax.random.key(seed))
    return dict(params, img=image_params, txt=merged(params["txt"], text_params, "txt"))


def caption_features(text_tower, text_params, source, *, tokenizer, batch_size, mesh,
                     worker_count) -> np.ndarray:
    """float32[N, D]: the text encoder's features of the caption of every record of `source`.

    WLS keeps its text encoder frozen, so these are computed once here rather than at every
    training step: on the embedded world, where all-MiniLM-L6-v2 dwarfs the stand-in image
    tower, they were about 80 % of the step (FiLM: 357 -> 62 ms on 2 CPU cores).
    """
    encode = jax.jit(lambda params, tokens: text_tower.apply({"params": params}, tokens)[0])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    operations = (transforms.Tokenize(tokenizer),
                  transforms.SelectKeys(("tokens", pipeline.MASK_KEY)))
    return features(encode, jax.device_put(text_params, replicated), source,
                    operations=operations, input_key="tokens", batch_size=batch_size, mesh=mesh,
                    worker_count=worker_count)["features"]


def knn_accuracy(bank, bank_labels, queries, labels, *, eval_set, ks, num_classes) -> dict:
    """{k: {"top1", "top5"}} of weighted k-NN; a set with a logits transform (ImageNet-R / -A,
    ObjectNet) is scored on the transformed class votes."""
    if eval_set.logits_transform is None:
        return knn.knn_accuracy(bank, bank_labels, queries, labels, ks=ks,
                                num_classes=num_classes)
    accuracy = {}
    for k in ks:
        votes = eval_set.logits_transform(np.asarray(knn.knn_scores(
            bank, bank_labels, queries, k=k, num_classes=num_classes)))
        best = np.argsort(-votes, axis=1, kind="stable")[:, :5]
        # As in `knn.knn_accuracy`, a class that got no vote never counts as a hit.
        hits = (best == np.asarray(labels)[:, None]) & (
            np.take_along_axis(votes, best, axis=1) > 0)
        accuracy[k] = {"top1": float(hits[:, 0].mean()), "top5": float(hits.any(axis=1).mean())}
    return accuracy


def knn_sweep(config, *, task, mesh, image_tower, theta0, theta1, frozen, method, seed):
    """Report records of k-NN accuracy of `interpolate(theta0, theta1, alpha)` (trained leaves
    only; `frozen` leaves stay theta0's) for every alpha of eval.alphas, every eval set of
    `task` against the ID training bank."""
    represent = REPRESENTATIONS[config.eval.representation]
    features_fn = jax.jit(lambda params, images: represent(*image_tower.apply(
        {"params": params}, images)))
    # The encoder is replicated on every device of the mesh (on all processes), once; each
    # alpha's params are mixed there.
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    theta0, theta1 = jax.device_put((theta0, theta1), replicated)
    mix = jax.jit(lambda theta0, theta1, alpha: jax.tree.map(
        lambda is_frozen, p0, p: p0 if is_frozen else p, frozen, theta0,
        interpolate.interpolate(theta0, theta1, alpha)), out_shardings=replicated)
    ks = tuple(config.eval.knn_ks)
    num_classes = len(task.class_names)
    report_metric = experiment.report_metric(config)
    read = dict(batch_size=config.eval.batch_size, mesh=mesh, worker_count=task.eval_worker_count)
    records = []
    for alpha in config.eval.alphas:
        params = mix(theta0, theta1, alpha)
        alpha_records = []
        bank, bank_labels = labelled_features(features_fn, params, task.train_eval_set, **read)
        for eval_set in task.eval_sets:
            queries, labels = labelled_features(features_fn, params, eval_set, **read)
            accuracy = knn_accuracy(bank, bank_labels, queries, labels, eval_set=eval_set,
                                    ks=ks, num_classes=num_classes)
            alpha_records += [
                dict(method=method, alpha=float(alpha), dataset=eval_set.name,
                     metric=f"knn{k}_{name}", seed=seed, value=value, kind=eval_set.kind)
                for k, values in accuracy.items() for name, value in values.items()]
        logging.info("%s at alpha=%g: %s", report_metric, alpha, {
            r["dataset"]: round(r["value"], 4) for r in alpha_records
            if r["metric"] == report_metric})
        records += alpha_records
    return records


def run(config, *, workdir: epath.Path, mesh, writer) -> list[dict]:
    """Trains the stand-in (if any) once and the `wls` stage per seed; returns k-NN records."""
    name = config.stages[-1]
    stage = config[name]
    text_model, text_params = convert.from_hf_bert(config.text_encoder.path,
                                                   dtype_mm=config.model.dtype)
    text_frozen = all(jax.tree.leaves(optim.frozen_mask(stage.optim, {"txt": text_params})))
    tokenizer = experiment.build_tokenizer(config, workdir)
    task = tasks.build(config.data, seed=config.seed)
    image, vision_params = vision_encoder(config, task=task, tokenizer=tokenizer, mesh=mesh,
                                          workdir=workdir, writer=writer)
    model = wls.Model(image=dict(image, adapter=stage.adapter.to_dict()),
                      text=module_fields(text_model))
    if text_frozen:  # Its caption features are computed once, not at every step.
        text_features = caption_features(
            model.towers()[1], text_params,
            methods.training_captions(task.caption_source, stage.method), tokenizer=tokenizer,
            batch_size=config.eval.batch_size, mesh=mesh, worker_count=task.eval_worker_count)
        task = dataclasses.replace(task, caption_source=captions.WithTextFeatures(
            task.caption_source, text_features))
    else:
        logging.info("config.%s.optim.schedule trains the text encoder: it runs at every step.",
                     name)
    method = methods.build(stage.method, stage_config=stage, config=config, tokenizer=tokenizer,
                           models={"wls": model}, task=task, templates=())
    # The same first records on every process, so that every process gets the same tokens.
    replay_batch = next(iter(pipeline.eval_batches(
        task.train_eval_set.source, batch_size=config.eval.batch_size,
        operations=task.train_eval_set.operations, shard_index=0, shard_count=1)))
    records = []
    for seed in range(config.seed, config.seed + config.num_seeds):
        params = initial_params(method, vision_params=vision_params, text_params=text_params,
                                replay_images=replay_batch["image"][replay_batch["mask"]],
                                seed=seed)
        logging.info("Stage %s (seed %d): wls with adapter %s for %d steps.", name, seed,
                     stage.adapter.to_dict(), stage.steps)
        trained = sharding.host_copy(train.run(
            name=name, stage_config=stage, method=method, init_params=params, mesh=mesh,
            workdir=experiment.stage_workdir(workdir, name, seed, config), seed=seed,
            writer=writer))
        records += knn_sweep(config, task=task, mesh=mesh, image_tower=model.towers()[0],
                             theta0=params["img"], theta1=trained["img"],
                             frozen=optim.frozen_mask(stage.optim, params)["img"], method=name,
                             seed=seed)
    return records
