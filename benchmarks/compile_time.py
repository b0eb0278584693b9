"""Compile time of the ViT-B/16 CLIP FLYP step (with and without `scan`) and of the evaluation
functions: what a user waits for at every start, before the first step or the first eval batch.

    PYTHONPATH=. python benchmarks/compile_time.py [--variant B/16 --batch 256 --repeats 3]

Every function is the project's own, lowered from abstract shapes (`jax.eval_shape`, nothing
allocated) and compiled for the default device, with the persistent compilation cache off:

  - the FLYP training step (`train.make_train_step` over `objectives.contrastive_loss`, AdamW,
    state donated), the CLIP of `benchmarks/gpu_step.py` in bf16 matmuls, each tower's blocks
    unrolled (scan off) or one `nn.scan` body (scan on, as `config.model.*.scan`);
  - the evaluation functions a run compiles: the image features of a batch
    (`features.image_features_fn`, k-NN and the linear probe), the zero-shot head of 1,000
    classes x 80 templates (`zero_shot.zero_shot_head`, the text tower over 80,000 prompts),
    and the classifier's top-k counts of a batch (`zero_shot.jit_counts`).

Printed: trace + lower seconds and compile seconds (medians of `--repeats`, JAX's in-memory
caches cleared before each), and the number of HLO instructions compiled.
"""
import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import gpu_step
from wlsft_jax import objectives, optim, train
from wlsft_jax.evals import features, zero_shot
from wlsft_jax.models import classifier

NUM_CLASSES, NUM_TEMPLATES = 1000, 80  # ImageNet's classes and CLIP's templates.


def step_function(args, scan: bool):
    """(FLYP step, abstract state, abstract batch) of the CLIP of `args.variant`."""
    model = gpu_step.clip_model(argparse.Namespace(**vars(args), scan=scan, remat="none"))
    batch = jax.eval_shape(lambda: gpu_step.random_batch(args.batch, args.image_size))
    spec = train.TrainSpec(model=model, example_inputs=(batch["image"], batch["tokens"]),
                           loss_fn=objectives.contrastive_loss, train_source=None,
                           train_operations=(), worker_count=0)
    example = (jnp.zeros((1, args.image_size, args.image_size, 3)),
               jnp.zeros((1, gpu_step.CONTEXT_LENGTH), jnp.int32))
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *example)["params"]))
    config = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-5, wd=0.1, decay="constant"))
    tx, _ = optim.make_optimizer(config, params, total_steps=1_000_000)
    state = dict(params=params, opt_state=jax.eval_shape(tx.init, params),
                 step=jax.ShapeDtypeStruct((), jnp.int32),
                 rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    step = train.make_train_step(spec, tx, optim.frozen_mask(config, params), accum_steps=1)
    return (lambda: jax.jit(step, donate_argnums=(0,))), (state, batch), model, params


def eval_functions(args, model, clip_params):
    """name -> (fresh jitted function, abstract arguments) of the evaluation functions."""
    images = jax.ShapeDtypeStruct((args.batch, args.image_size, args.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((NUM_CLASSES, NUM_TEMPLATES, gpu_step.CONTEXT_LENGTH),
                                  jnp.int32)
    classifier_model = classifier.Model(img=model.image, num_classes=NUM_CLASSES)
    head = nn.unbox(jax.eval_shape(classifier_model.init, jax.random.key(0), images))
    batch = {"image": images, "label": jax.ShapeDtypeStruct((args.batch,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((args.batch,), jnp.bool_)}
    return {
        "image features (k-NN, linear probe), one batch":
            (lambda: features.image_features_fn(model, "features"), (clip_params["img"], images)),
        f"zero-shot head, {NUM_CLASSES} classes x {NUM_TEMPLATES} templates":
            (lambda: jax.jit(lambda p, t: zero_shot.zero_shot_head(model, p, t)),
             (clip_params, tokens)),
        "classifier top-k counts, one batch":
            (lambda: zero_shot.jit_counts(classifier_model),
             ({"img": clip_params["img"], "head": head["params"]["head"]}, batch)),
    }


def timed_compile(make_jitted, arguments, repeats):
    """(median trace + lower seconds, median compile seconds, HLO instruction count)."""
    lowers, compiles = [], []
    for _ in range(repeats):
        jax.clear_caches()  # A jit of the same function would otherwise reuse its executable.
        start = time.perf_counter()
        lowered = make_jitted().lower(*arguments)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiles.append(time.perf_counter() - lowered_at)
        lowers.append(lowered_at - start)
    instructions = sum(line.startswith("  ") and " = " in line
                       for line in compiled.as_text().splitlines())
    return float(np.median(lowers)), float(np.median(compiles)), instructions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    device = jax.devices()[0]
    print(f"command: PYTHONPATH=. python benchmarks/compile_time.py --variant {args.variant} "
          f"--batch {args.batch} --dtype {args.dtype} --repeats {args.repeats}")
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, load average "
          f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}; medians of {args.repeats}")
    print("| function | trace + lower (s) | compile (s) | HLO instructions |")
    print("|---|---|---|---|")
    for scan in (False, True):
        make_step, arguments, model, params = step_function(args, scan)
        functions = {f"FLYP step, {args.variant} CLIP, batch {args.batch}": (make_step, arguments),
                     **eval_functions(args, model, params)}
        for name, (make_jitted, arguments) in functions.items():
            lower, compile_, count = timed_compile(make_jitted, arguments, args.repeats)
            print(f"| {name}, scan {'on' if scan else 'off'} | {lower:.1f} | {compile_:.1f} "
                  f"| {count} |", flush=True)


if __name__ == "__main__":
    main()
