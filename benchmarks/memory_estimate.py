"""What fits where: memory per chip of a FLYP training step (CLIP ViT-B/16, batch 512).

Sizes come from the real model and optimizer definitions: params, AdamW state and gradients
from `jax.eval_shape`; activations from XLA's own buffer assignment of the real training step
(`train.make_train_step`), compiled on CPU for two per-chip batches
(`jax.jit(...).lower(...).compile().memory_analysis()`) and extrapolated linearly in the batch.
The probe batches must be large enough that activations, not the optimizer update, set the peak
(with `--remat full`, batches 4 and 8 are not). Nothing is allocated, so it runs on a laptop CPU
(about a minute, mostly compilation).

    PYTHONPATH=. python benchmarks/memory_estimate.py [--batch 512] [--probe_batches 32 64] \
        [--scan] [--remat none|minimal|full]

`--scan` / `--remat` set the memory levers of both towers (`vit.Model.scan`, `remat_policy`).

CPU buffer assignment is an estimate of TPU/GPU memory, not a measurement: those backends fuse
and lay out differently. Treat the table as +-25% and keep headroom; launch/MEMORY.md holds the
numbers this prints.
"""
import argparse
import importlib.util
import math
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax import context, objectives, optim, train
from wlsft_jax.data import imagenet_classes
from wlsft_jax.models import blocks

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
# CLIP's BPE: 49408 tokens, end-of-text the largest id, 77-token context (sizes only).
CLIP_BPE_SIZES = types.SimpleNamespace(vocab_size=49408, eot_id=49407, context_length=77)
# name -> (chips, usable GiB per chip). TPU v4: 32 GiB HBM per chip (a v4-8 has 4 chips);
# v5e: 16 GiB per chip; GPU: 80 GB minus what the CUDA context and XLA keep back.
DEVICES = (
    ("TPU v4-8 (4 chips x 32 GiB)", 4, 32.0),
    ("TPU v5e-8 (8 chips x 16 GiB)", 8, 16.0),
    ("1 GPU, 80 GB (A100/H100)", 1, 74.5),
)
HEADROOM = 0.9  # Leave 10% for fragmentation, collectives' buffers and the input pipeline.


def flyp_imagenet_config():
    spec = importlib.util.spec_from_file_location(
        "flyp_clip", os.path.join(REPO_ROOT, "configs", "flyp_clip.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("imagenet")


def nbytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def step_memory(config, per_chip_batch: int):
    """(static bytes, activation/temporary bytes) of one FLYP step at `per_chip_batch`."""
    stage = config.flyp
    models = context.build_models(config, CLIP_BPE_SIZES,
                                     num_classes=len(imagenet_classes.IMAGENET_CLASSES))
    size = config.data.image_size
    images = jax.ShapeDtypeStruct((per_chip_batch, size, size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((per_chip_batch, CLIP_BPE_SIZES.context_length), jnp.int32)
    spec = train.TrainSpec(model=models["clip"], example_inputs=(images, tokens),
                           loss_fn=objectives.contrastive_loss, train_source=None,
                           train_operations=(), worker_count=0)
    params = nn.unbox(spec.abstract_params())
    tx, _ = optim.make_optimizer(stage.optim, params, total_steps=stage.steps)
    state = dict(params=params, opt_state=jax.eval_shape(tx.init, params),
                 step=jax.ShapeDtypeStruct((), jnp.int32),
                 rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    step = train.make_train_step(spec, tx, optim.frozen_mask(stage.optim, params), 1)
    compiled = jax.jit(step, donate_argnums=(0,)).lower(
        state, {"image": images, "tokens": tokens}).compile()
    analysis = compiled.memory_analysis()
    return state, analysis.temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="global batch size")
    parser.add_argument("--probe_batches", type=int, nargs=2, default=(32, 64),
                        help="two per-chip batches compiled on CPU to fit activations")
    parser.add_argument("--scan", action="store_true", help="nn.scan over each tower's blocks")
    parser.add_argument("--remat", default="none", choices=list(blocks.REMAT_POLICIES),
                        help="rematerialisation policy of every block")
    args = parser.parse_args()
    config = flyp_imagenet_config()
    for tower in (config.model.img, config.model.txt):
        tower.update(scan=args.scan, remat_policy=args.remat)

    small, large = args.probe_batches
    state, temp_small = step_memory(config, small)
    _, temp_large = step_memory(config, large)
    per_example = (temp_large - temp_small) / (large - small)
    fixed_temp = temp_small - per_example * small
    params_b, opt_b = nbytes(state["params"]), nbytes(state["opt_state"])
    grads_b = params_b  # One gradient per param, same dtype; XLA counts it as a temporary.
    other_fixed = max(fixed_temp - grads_b, 0.0)
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"]))

    print(f"FLYP, CLIP ViT-B/16 ({config.model.dtype} matmuls, scan {args.scan}, remat "
          f"{args.remat}), batch {args.batch}; {num_params / 1e6:.1f} M params")
    print(f"  params {params_b / GIB:.2f} GiB, AdamW state {opt_b / GIB:.2f} GiB, "
          f"gradients {grads_b / GIB:.2f} GiB")
    print(f"  XLA temporaries (CPU compile at per-chip batch {small} / {large}: "
          f"{temp_small / GIB:.2f} / {temp_large / GIB:.2f} GiB) = "
          f"{fixed_temp / GIB:.2f} GiB fixed (gradients included) "
          f"+ {per_example / 2**20:.1f} MiB per example")
    print()
    print("| Hardware | per-chip batch | activations | total, data-parallel | total, fsdp | "
          "fits? (accum_steps) |")
    print("|---|---|---|---|---|---|")
    for name, chips, gib in DEVICES:
        budget = HEADROOM * gib * GIB
        per_chip = args.batch // chips

        def total(accum, sharded):
            """Bytes per chip; accumulation adds a gradient buffer, splits the activations."""
            grads = grads_b * (2 if accum > 1 else 1)
            persistent = params_b + opt_b + grads
            if sharded:
                persistent /= chips
            return persistent + other_fixed + per_example * per_chip / accum

        accum = 1
        while min(total(accum, False), total(accum, True)) > budget and per_chip // accum > 1:
            accum *= 2
        fits = min(total(accum, False), total(accum, True)) <= budget
        print(f"| {name} | {per_chip} | {per_example * per_chip / GIB:.1f} GiB "
              f"| {total(1, False) / GIB:.1f} GiB | {total(1, True) / GIB:.1f} GiB "
              f"| {f'yes ({accum})' if fits else 'no'} |")


if __name__ == "__main__":
    main()
