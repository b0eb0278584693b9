"""Evaluator "zero_shot": a classifier's accuracy (top-k, and the WILDS metrics of every
example's prediction) on every eval set, a CLIP evaluated through the zero-shot head of its text
tower.

The head follows CLIP / WiSE-FT: each class embedding is the mean over prompt templates of the
L2-normalised text embeddings, renormalised; logits = temperature * (image embedding . class
embedding). As a linear layer on L2-normalised image features that is kernel = temperature *
class_embeddings.T, bias = 0 — the same form as a fine-tuned head, so WiSE-FT can interpolate it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from wlsft_jax.data import tasks, templates as templates_lib, wilds
from wlsft_jax.data.pipeline import MASK_KEY

PREDICTION = "prediction"
# report_metrics: the metric the report tabulates for the ID ("id") and the OOD datasets ("ood"):
# top-1, or a task's official metric such as iWildCam's macro-F1 (recipes.REAL_TASKS).
SETTINGS = dict(report_metrics=dict(id="top1", ood="top1"))


def report_metric(settings, kind: str) -> str:
    """settings["report_metrics"][kind]."""
    return settings["report_metrics"][kind]


def recorded_metrics(settings, config, dataset: str) -> tuple[str, ...]:
    """The metrics this evaluator records for `dataset` (top-1, top-5, a task's own)."""
    del settings
    return tasks.eval_metrics(config.data, dataset)


def check(settings, config, name) -> None:
    """report_metrics names a metric for the ID and for the OOD datasets, and nothing else."""
    del config
    metrics = settings["report_metrics"]
    kinds = (tasks.ID, tasks.OOD)
    if not hasattr(metrics, "keys") or set(metrics.keys()) != set(kinds):
        raise ValueError(f"evals.{name}.report_metrics={dict(metrics)} must name a metric for "
                         f"each of {list(kinds)}, e.g. dict(id='top1', ood='top1').")


class Evaluator:
    """Accuracy of the classifier of `context.models` on every eval set of `context.task` (ID
    first), each scored through its logits transform. A CLIP's params are first turned into
    that classifier with its zero-shot head (`as_classifier`). The jitted counts are built once
    per distinct transform (and need of predictions); sets without metrics of every example's
    prediction never move predictions to the host. `eval_sets` narrows the sets (by default all).
    """

    def __init__(self, context, model=None, settings=None, eval_sets=None):
        del model, settings  # Every stage is scored as the task's classifier.
        self.context = context
        self.eval_sets = context.task.eval_sets if eval_sets is None else tuple(eval_sets)
        self.counts_fns = {}
        for eval_set in self.eval_sets:
            transform, predictions = key = self._counts_key(eval_set)
            if key not in self.counts_fns:
                self.counts_fns[key] = jit_counts(context.models["classifier"], transform,
                                                  predictions=predictions)

    @staticmethod
    def _counts_key(eval_set):
        return eval_set.logits_transform, bool(eval_set.metrics)

    def run(self, params, *, method, alpha, seed) -> list[dict]:
        """Report records of `params` (a classifier's or a CLIP's) on every eval set."""
        if "txt" in params:
            params = as_classifier(params, self.context.head_fn)
        records = []
        for eval_set in self.eval_sets:
            values = accuracy(self.counts_fns[self._counts_key(eval_set)], params,
                              self.context.eval_batches(eval_set), metrics=eval_set.metrics)
            records += [dict(method=method, alpha=float(alpha), dataset=eval_set.name,
                             metric=metric, seed=seed, value=value, kind=eval_set.kind)
                        for metric, value in values.items()]
        return records


def zero_shot_head_fn(config, clip_model, tokenizer, class_names):
    """Jitted clip_params -> the zero-shot head of `class_names` in eval.templates."""
    class_tokens = jnp.asarray(class_prompt_tokens(
        tokenizer, class_names, templates_lib.get_templates(config.eval.templates)))
    return jax.jit(lambda clip_params: zero_shot_head(clip_model, clip_params, class_tokens))


def as_classifier(clip_params, head_fn):
    """The image tower with the zero-shot head of the text tower, as WiSE-FT evaluates a CLIP."""
    return {"img": clip_params["img"], "head": head_fn(clip_params)}


def class_prompt_tokens(tokenizer, class_names, templates) -> np.ndarray:
    """int32[num_classes, num_templates, context_length]: every template filled with every class."""
    prompts = [template.format(name) for name in class_names for template in templates]
    tokens = tokenizer.encode(prompts)
    return tokens.reshape(len(class_names), len(templates), -1)


def zero_shot_head(clip_model, clip_params, class_tokens) -> dict:
    """{"kernel": [D, C], "bias": [C]} from the text tower of `clip_params` (jit-friendly)."""
    num_classes, num_templates, length = class_tokens.shape
    _, ztxt, out = clip_model.apply({"params": clip_params}, None,
                                    class_tokens.reshape(-1, length))
    per_template = ztxt.reshape(num_classes, num_templates, -1)
    class_embeddings = per_template.mean(axis=1)
    class_embeddings /= jnp.linalg.norm(class_embeddings, axis=-1, keepdims=True)
    return {"kernel": out["temperature"] * class_embeddings.T,
            "bias": jnp.zeros((num_classes,), class_embeddings.dtype)}


def topk_correct(logits, labels, mask, ks=(1, 5)) -> dict:
    """Counts of masked examples whose label is among the top-k logits, for each k."""
    ranks = jnp.sum(logits > jnp.take_along_axis(logits, labels[:, None], axis=1), axis=1)
    return {f"top{k}": jnp.sum((ranks < k) & mask) for k in ks if k <= logits.shape[1]}


def jit_counts(classifier_model, logits_transform=None, *, predictions: bool = False):
    """Jitted (params, batch) -> counts of top-1/top-5 hits and of examples, over unmasked rows.

    `logits_transform` maps the classifier's logits onto the eval set's classes first (e.g.
    `label_spaces.restrict_logits` for ImageNet-R); None keeps them. The counts are replicated
    scalars, so summing them on the host works on any mesh and host. With `predictions`, the
    output also holds each row's predicted class ("prediction", the argmax of the transformed
    logits, sharded like the batch) for the metrics `accuracy` computes on the host.
    """

    def counts(params, batch):
        logits, _ = classifier_model.apply({"params": params}, batch["image"])
        if logits_transform is not None:
            logits = logits_transform(logits)
        outputs = dict(topk_correct(logits, batch["label"], batch["mask"]),
                       count=jnp.sum(batch["mask"]))
        if predictions:
            outputs[PREDICTION] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return outputs

    return jax.jit(counts)


def accuracy(counts_fn, params, batches, metrics=()) -> dict:
    """Top-1/top-5 accuracy from `jit_counts` over eval batches (padding rows are masked out),
    and each of `metrics` (names in `wilds.METRICS`, e.g. macro-F1) from every real example's
    prediction: then `counts_fn` has predictions=True and the batches carry the record fields
    the metrics read. Predictions are gathered from the global arrays of all processes."""
    fields = tuple(dict.fromkeys(field for name in metrics for field in wilds.METRICS[name].fields))
    totals, rows = {}, []
    for batch in batches:
        counts = dict(counts_fn(params, batch))
        if metrics:  # Device arrays: gathered once, after the last batch is dispatched.
            rows.append({key: batch[key] for key in ("label", MASK_KEY, *fields)}
                        | {PREDICTION: counts.pop(PREDICTION)})
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + int(value)
    count = totals.pop("count", 0)
    if count == 0:
        raise ValueError("The evaluation set is empty: no batch had an unmasked example.")
    values = {name: value / count for name, value in totals.items()}
    if metrics:
        gathered = multihost_utils.process_allgather(rows, tiled=True)
        real = {key: np.concatenate([row[key][row[MASK_KEY]] for row in gathered])
                for key in ("label", PREDICTION, *fields)}
        for name in metrics:
            metric = wilds.METRICS[name]
            values[name] = metric.function(real["label"], real[PREDICTION],
                                           *(real[field] for field in metric.fields))
    return values
