"""What several methods share: the stage bundle, example inputs and the training data checks."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

from wlsft_jax import train

# The evaluator types (wlsft_jax.evals) that score a method's stages (its SCORED_BY): those of
# image features, and the zero-shot evaluator for a stage that is (or holds) a classifier.
FEATURE_EVALUATORS = ("knn", "linear_probe")
ANY_EVALUATOR = ("zero_shot", *FEATURE_EVALUATORS)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A built stage: what the training loop needs; `start(params, seed)`, the stage's starting
    params made from its input params (None: train from scratch); `evaluated(params)`, the part
    of its params the evaluators score, in their layout (by default all of them); `train`, what
    trains it, with `train.run`'s arguments (by default the training loop itself)."""
    spec: train.TrainSpec
    start: Callable
    evaluated: Callable = lambda params: params
    train: Callable = train.run


def example_inputs(context, stage_config, *, text: bool) -> tuple:
    """Zero images (and tokens, with `text`) of one micro-batch: shapes for `model.init`."""
    data = context.config.data
    batch = stage_config.batch_size // stage_config.accum_steps
    images = jnp.zeros((batch, data.image_size, data.image_size, 3), jnp.float32)
    if not text:
        return (images,)
    return images, jnp.zeros((batch, context.tokenizer.context_length), jnp.int32)


def training_data(source, method_name: str):
    """`source`, or a ValueError when the data has none for `method_name`."""
    if source is None:
        raise ValueError(f"Method {method_name!r} has no training data here: 'pretrain' and "
                         "'supervised' read the embedded world's data.pretrain_domains, 'wls' "
                         "the world's captions or data.captions; on real data start from "
                         "pretrained weights (init.format='hf_clip' / 'hf_vit') and fine-tune "
                         "with 'ft', 'lp', 'flyp' or 'wls'.")
    return source


def fresh_or_given(spec: train.TrainSpec, mesh) -> Callable:
    """A `start` that keeps the input params, or initialises fresh ones when there are none."""
    def start(params, seed):
        return spec.init_params(mesh, seed) if params is None else params
    return start


def clip_start(spec: train.TrainSpec, mesh, *, name: str, method: str) -> Callable:
    """`fresh_or_given` for a stage that trains a CLIP: an image classifier input is an error."""
    fresh_or_input = fresh_or_given(spec, mesh)

    def start(params, seed):
        if params is not None and "txt" not in params:
            raise ValueError(f"Stage {name!r} ({method}) trains a CLIP, but its input is an "
                             "image classifier; give it a CLIP stage as input.")
        return fresh_or_input(params, seed)
    return start
