"""Zero-shot classification heads from a CLIP text tower, and classifier accuracy.

The head follows CLIP / WiSE-FT: each class embedding is the mean over prompt templates of the
L2-normalised text embeddings, renormalised; logits = temperature * (image embedding . class
embedding). As a linear layer on L2-normalised image features that is kernel = temperature *
class_embeddings.T, bias = 0 — the same form as a fine-tuned head, so WiSE-FT can interpolate it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


def jit_counts(classifier_model, logits_transform=None):
    """Jitted (params, batch) -> counts of top-1/top-5 hits and of examples, over unmasked rows.

    `logits_transform` maps the classifier's logits onto the eval set's classes first (e.g.
    `label_spaces.restrict_logits` for ImageNet-R); None keeps them. The counts are replicated
    scalars, so summing them on the host works on any mesh and host.
    """

    def counts(params, batch):
        logits, _ = classifier_model.apply({"params": params}, batch["image"])
        if logits_transform is not None:
            logits = logits_transform(logits)
        return dict(topk_correct(logits, batch["label"], batch["mask"]),
                    count=jnp.sum(batch["mask"]))

    return jax.jit(counts)


def accuracy(counts_fn, params, batches) -> dict:
    """Top-1/top-5 accuracy from `jit_counts` over eval batches (padding rows are masked out)."""
    totals = {}
    for batch in batches:
        for name, value in counts_fn(params, batch).items():
            totals[name] = totals.get(name, 0) + int(value)
    count = totals.pop("count", 0)
    if count == 0:
        raise ValueError("The evaluation set is empty: no batch had an unmasked example.")
    return {name: value / count for name, value in totals.items()}
