"""Param-layout helpers for `vit.Model`: they transform param pytrees, not the model.

`with_resolution` (with `resample_patch_kernel`) moves params to another image / patch size;
`stack_layers` / `unstack_layers` convert params between looped blocks (`encoderblock_{i}`) and
the stacked layout of `scan=True` (`encoderblock`). Kept apart from `vit`, which defines the
model and needs none of these; this module uses vit's `resample_posemb` and `STACKED_BLOCKS`.
"""
from collections.abc import Mapping
import re

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from wlsft_jax.models import blocks, vit

BLOCK_NAME = re.compile(r"encoderblock_(\d+)")


def resample_patch_kernel(kernel, patch_size: int):
    """Resizes a [p, p, C, D] patch-embedding kernel to a new patch size (FlexiViT pseudo-inverse).

    The new kernel gives (nearly) the same embedding on a bilinearly resized patch as the old one
    on the original patch, which keeps a pretrained stem meaningful at another patch size.
    """
    old_shape = kernel.shape[:2]
    if old_shape == (patch_size, patch_size):
        return kernel
    logging.info("ViT: resampling patch kernel from %dx%d to %dx%d.", *old_shape, patch_size,
                 patch_size)
    basis = np.eye(old_shape[0] * old_shape[1], dtype=np.float32).reshape(-1, *old_shape)
    resize = jax.vmap(lambda b: jax.image.resize(b, (patch_size, patch_size), "bilinear").ravel())
    resize_matrix = np.asarray(resize(basis))  # [old_p*old_p, new_p*new_p]
    flat = np.asarray(kernel, np.float32).reshape(resize_matrix.shape[0], -1)
    new_kernel = np.linalg.pinv(resize_matrix) @ flat
    return new_kernel.reshape(patch_size, patch_size, *kernel.shape[2:]).astype(kernel.dtype)


def with_resolution(config: dict, params: dict, *, image_size: int | None = None,
                    patch_size: int | None = None, method: str = "bilinear") -> tuple[dict, dict]:
    """`vit.Model` fields and params for another image / patch size (None keeps the current one).

    The patch kernel and the position-embedding grid are resampled (logged) when they change.
    """
    image_size = image_size or config["image_size"]
    patch_size = patch_size or config["patch_size"]
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}; "
                         f"use a multiple of {patch_size}.")
    kernel = resample_patch_kernel(params["embedding"]["kernel"], patch_size)
    side = image_size // patch_size
    posemb = vit.resample_posemb(params["pos_embedding"], (side, side), method)
    params = {**params, "embedding": {**params["embedding"], "kernel": kernel},
              "pos_embedding": posemb}
    return dict(config, image_size=image_size, patch_size=patch_size), params

def stack_layers(params: Mapping) -> dict:
    """Params of looped blocks -> the layout of `scan=True`, at every level of nesting.

    Wherever `encoderblock_0` ... `encoderblock_{n-1}` sit side by side, they are replaced by one
    `encoderblock` whose leaves stack theirs along a new leading axis; so a whole CLIP (both
    towers) or a single tower converts in one call. Use it on params from the HF / big_vision
    converters to load them into a scanned model.
    """
    if not isinstance(params, Mapping):
        return params
    params = {name: stack_layers(value) for name, value in params.items()}
    looped = sorted((name for name in params if BLOCK_NAME.fullmatch(name)),
                    key=lambda name: int(BLOCK_NAME.fullmatch(name)[1]))
    if not looped:
        return params
    if blocks.STACKED_BLOCKS in params:
        raise ValueError(f"Params hold both {looped} and a stacked {blocks.STACKED_BLOCKS!r}; give "
                         "params of one layout.")
    if looped != [f"encoderblock_{i}" for i in range(len(looped))]:
        raise ValueError(f"Blocks {looped} are not encoderblock_0 ... encoderblock_"
                         f"{len(looped) - 1}; only a complete run of blocks can be stacked.")
    structures = {jax.tree.structure(params[name]) for name in looped}
    if len(structures) > 1:
        raise ValueError("Blocks differ in their params (adapters on some blocks?); only "
                         "identical blocks can be stacked for scan=True.")
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *(params[name] for name in looped))
    rest = {name: value for name, value in params.items() if name not in looped}
    return {**rest, blocks.STACKED_BLOCKS: stacked}


def unstack_layers(params: Mapping) -> dict:
    """The inverse of `stack_layers`: every stacked `encoderblock` -> `encoderblock_{i}`.

    Use it before the converters' exporters (`to_hf_clip`, `to_big_vision`), which read the
    looped layout.
    """
    if not isinstance(params, Mapping):
        return params
    params = {name: unstack_layers(value) for name, value in params.items()}
    if blocks.STACKED_BLOCKS not in params:
        return params
    stacked = params.pop(blocks.STACKED_BLOCKS)
    depth = jax.tree.leaves(stacked)[0].shape[0]
    params.update({f"encoderblock_{i}": jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
                   for i in range(depth)})
    return params
