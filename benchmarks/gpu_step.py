"""CLIP FLYP training step on one device: step time, examples/s, FLOPs, MFU and memory.

    PYTHONPATH=. python benchmarks/gpu_step.py                        # ViT-B/16 CLIP, batch 256
    PYTHONPATH=. python benchmarks/gpu_step.py --batch 512 --remat full --scan
    PYTHONPATH=. python benchmarks/gpu_step.py --variant mu/8 --batch 8 --steps 2 --repeats 2

The step is the project's own: `train.make_train_step` over `objectives.contrastive_loss` (FLYP's
CLIP loss, both towers training), `two_towers.Model` built as `convert.from_hf_clip` builds an
OpenAI CLIP (pre-LayerNorm image tower without patch bias, quick_gelu, eps 1e-5, text tower
pooled at the largest token id, context 77, vocabulary 49408) and `optim.make_optimizer` AdamW,
jitted with the state donated as `train.run` does. Inputs are random (`--image_size` images,
token ids).
`--variant` names the image tower; the text tower is CLIP's for that size (TEXT_VARIANTS).

Printed: the median over `--repeats` of `--steps` steps; model FLOPs per step counted
analytically (matmuls of forward + backward = 3x forward, no remat recomputation) and by XLA's
cost analysis of the compiled step (which counts what runs, remat included, but a scanned
loop's body only once) as a cross-check;
MFU = analytic FLOPs/s over the peak of a square `jnp.dot` in the step's matmul dtype timed on
the same device (8192² on an accelerator, 2048² on CPU), interleaved with the step; memory from
the device's `memory_stats()["peak_bytes_in_use"]` where the backend has it (GPU, TPU) and from
the compiled step's `memory_analysis()` (XLA's buffer assignment) everywhere.
"""
import argparse
import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from interleaved_timing import interleaved_medians
from wlsft_jax import objectives, optim, train
from wlsft_jax.models import blocks, two_towers, vit

# Image tower name -> the text tower of the CLIP of that size (OpenAI / OpenCLIP): B/16 and
# B/32 have width 512, 8 heads, 12 blocks (our "M"), L/14 768 wide (our "B"), H/14 our "L".
# Any other image tower gets the text tower of its own name.
TEXT_VARIANTS = {"B": "M", "L": "B", "H": "L"}
VOCAB_SIZE, CONTEXT_LENGTH = 49408, 77
GIB = 2**30


def clip_model(args) -> two_towers.Model:
    """The CLIP of `args.variant` with the step's matmul dtype and memory levers."""
    name = args.variant.partition("/")[0]
    text_variant = TEXT_VARIANTS.get(name, name)
    levers = dict(act="quick_gelu", layer_norm_eps=1e-5, dtype_mm=args.dtype, scan=args.scan,
                  remat_policy=args.remat)
    image = dict(levers, variant=args.variant, image_size=args.image_size, patch_bias=False,
                 ln_pre=True)
    text = dict(levers, variant=text_variant, vocab_size=VOCAB_SIZE,
                context_length=CONTEXT_LENGTH, eot_id=None)
    out_dim = vit.parse_variant(text_variant, with_patch=False)["width"]
    return two_towers.Model(image=image, text=text, out_dim=out_dim)


def analytic_flops_per_step(model: two_towers.Model, batch: int) -> float:
    """Matmul FLOPs of forward + backward (3x forward) of one step; biases and norms excluded.

    Attention counts every query-key pair (the causal text tower computes them all too).
    """
    image_tower, text_tower = model.towers()

    def blocks(sizes, length):
        width, mlp = sizes["width"], sizes["mlp_dim"]
        projections = 2 * length * width * (4 * width + 2 * mlp)  # qkv, out, fc1, fc2
        attention = 2 * 2 * length * length * width  # q k^T and probs v
        return sizes["depth"] * (projections + attention)

    image_sizes, text_sizes = image_tower.sizes(), text_tower.sizes()
    patches = (image_tower.image_size // image_sizes["patch_size"]) ** 2
    stem = 2 * patches * image_sizes["patch_size"] ** 2 * image_tower.channels * image_sizes["width"]
    heads = 2 * (image_sizes["width"] + text_sizes["width"]) * model.out_dim
    per_example = (stem + blocks(image_sizes, patches + 1) + blocks(text_sizes, CONTEXT_LENGTH)
                   + heads + 2 * batch * model.out_dim)  # This example's row of the logits.
    return 3.0 * per_example * batch


def random_batch(batch: int, image_size: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, image_size, image_size, 3), np.float32)
    tokens = rng.integers(1, VOCAB_SIZE - 1, (batch, CONTEXT_LENGTH)).astype(np.int32)
    tokens[np.arange(batch), rng.integers(2, CONTEXT_LENGTH, batch)] = VOCAB_SIZE - 1  # CLIP's EOT
    return {"image": jnp.asarray(images), "tokens": jnp.asarray(tokens)}


def compiled_step(model: two_towers.Model, batch: dict, mu_dtype: str | None):
    """(compiled jitted FLYP step, its initial state)."""
    spec = train.TrainSpec(model=model,
                           example_inputs=(batch["image"][:1], batch["tokens"][:1]),
                           loss_fn=objectives.contrastive_loss, train_source=None,
                           train_operations=(), worker_count=0)
    params = jax.jit(lambda rng: nn.unbox(model.init(rng, *spec.example_inputs)["params"]))(
        jax.random.key(0))
    config = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-5, wd=0.1, decay="constant",
                                            mu_dtype=mu_dtype))
    tx, _ = optim.make_optimizer(config, params, total_steps=1_000_000)
    state = dict(params=params, opt_state=jax.jit(tx.init)(params),
                 step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)))
    step = train.make_train_step(spec, tx, optim.frozen_mask(config, params), accum_steps=1)
    return jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile(), state


def matmul_peak(size: int, dtype: str):
    """(run, FLOPs per run) of a jitted square `jnp.dot` of `size` in `dtype`."""
    a, b = (jax.random.normal(jax.random.key(i), (size, size), dtype) for i in range(2))
    dot = jax.jit(jnp.dot)
    return (lambda: dot(a, b).block_until_ready()), 2.0 * size**3


def run_steps(compiled, carry, batch, steps):
    for _ in range(steps):
        carry[0], metrics = compiled(carry[0], batch)
    return float(metrics["loss"])  # Waits for the last step.


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16", help="image tower, NAME/PATCH (vit.VARIANTS)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan", action="store_true", help="nn.scan over each tower's blocks")
    parser.add_argument("--remat", default="none", choices=list(blocks.REMAT_POLICIES),
                        help="rematerialisation policy of every block")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="matmul dtype (params, norms and softmax stay float32)")
    parser.add_argument("--mu_dtype", default=None, choices=list(optim.MU_DTYPES),
                        help="dtype of AdamW's first moment (default: the params')")
    parser.add_argument("--peak_size", type=int, default=None,
                        help="side of the peak matmul (default 8192, 2048 on CPU)")
    args = parser.parse_args()
    device = jax.devices()[0]
    peak_size = args.peak_size or (2048 if device.platform == "cpu" else 8192)

    model = clip_model(args)
    batch = random_batch(args.batch, args.image_size)
    start = time.perf_counter()
    compiled, state = compiled_step(model, batch, args.mu_dtype)
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    xla_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    memory = compiled.memory_analysis()
    analytic = analytic_flops_per_step(model, args.batch)
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))

    peak_run, peak_flops = matmul_peak(peak_size, args.dtype)
    contenders = {"step": functools.partial(run_steps, compiled, [state], batch, args.steps),
                  "peak": peak_run}
    seconds, results = interleaved_medians(contenders, args.repeats)
    step_seconds = seconds["step"] / args.steps
    peak = peak_flops / seconds["peak"]
    achieved = analytic / step_seconds
    device_peak = (device.memory_stats() or {}).get("peak_bytes_in_use")

    print(f"command: PYTHONPATH=. python benchmarks/gpu_step.py --variant {args.variant} "
          f"--image_size {args.image_size} --batch {args.batch} --steps {args.steps} "
          f"--repeats {args.repeats}{' --scan' * args.scan} --remat {args.remat} "
          f"--dtype {args.dtype}{f' --mu_dtype {args.mu_dtype}' if args.mu_dtype else ''}")
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}; {num_params / 1e6:.1f} M params, "
          f"compile {compile_seconds:.0f} s, final loss {results['step']:.3f}")
    scan_note = ", the scanned blocks counted once" if args.scan else ""
    print(f"FLOPs per step: analytic {analytic / 1e12:.3f} T, XLA cost analysis "
          f"{xla_flops / 1e12:.3f} T ({xla_flops / analytic:.2f}x analytic{scan_note}); "
          "MFU uses analytic")
    print(f"peak: {peak_size}² {args.dtype} jnp.dot, {peak / 1e12:.2f} TFLOP/s (median)")
    print(f"memory: XLA buffer assignment temporaries {memory.temp_size_in_bytes / GIB:.2f} GiB, "
          f"arguments {memory.argument_size_in_bytes / GIB:.2f} GiB; device peak in use "
          + (f"{device_peak / GIB:.2f} GiB" if device_peak is not None else "n/a (no memory_stats)"))
    print()
    print("| variant | batch | scan | remat | step (ms) | examples/s | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.variant} @ {args.image_size} px | {args.batch} | {'on' if args.scan else 'off'} "
          f"| {args.remat} | {1e3 * step_seconds:.1f} | {args.batch / step_seconds:.1f} "
          f"| {achieved / 1e12:.3f} | {achieved / peak:.1%} |")


if __name__ == "__main__":
    main()
