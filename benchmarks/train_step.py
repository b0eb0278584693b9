"""Tiny-CLIP contrastive training step: wlsft_jax against PyTorch `transformers.CLIPModel` on CPU.

    PYTHONPATH=. python benchmarks/train_step.py [--repeats 7] [--steps 3] [--threads 2 [1]] [--bf16]

The model of PERF_NOTES: image 32 px, patch 4 (65 tokens), width 128, 4 image + 4 text blocks,
4 heads, MLP 512, text context 16, joint dim 128, batch 128, AdamW. Both sides are the same CLIP
(pre-LayerNorm in the image tower, no patch bias, quick_gelu, eps 1e-5, causal text tower pooled
at the end-of-text token). Ours is the real training step: `train.make_train_step` over
`objectives.contrastive_loss`, `two_towers.Model` and `optim.make_optimizer` AdamW, jitted with the
state donated as `train.run` does. PyTorch runs forward, backward and `torch.optim.AdamW`.

Repeats alternate between the contenders, including a 2048² fp32 `jnp.dot` that measures the
machine's matmul peak in the same run (`interleaved_timing`), so load from other processes falls
on all alike. Model FLOPs per step come from XLA's cost analysis of the compiled step and are
cross-checked against an analytic matmul count; MFU = achieved model FLOP/s / measured peak.
The load average is printed before and after: PyTorch suffers more than XLA on a busy machine.
The last lines read `ratio <R>x vs <PyTorch contender>` (R: its time over ours, fp32).
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
from wlsft_jax.models import two_towers

BATCH, IMAGE, PATCH, CONTEXT, VOCAB = 128, 32, 4, 16, 1000
WIDTH, MLP, HEADS, DEPTH, EPS, ACT = 128, 512, 4, 4, 1e-5, "quick_gelu"
PEAK_SIZE = 2048
LR, WD = 1e-4, 0.1


def analytic_flops_per_example() -> float:
    """Matmul FLOPs of forward + backward (3x forward) for one example, biases/norms excluded."""

    def block(length):
        projections = 2 * length * WIDTH * (3 * WIDTH + WIDTH + 2 * MLP)  # qkv, out, fc1, fc2
        attention = 2 * 2 * length * length * WIDTH  # q k^T and probs v
        return projections + attention

    image_tokens = (IMAGE // PATCH) ** 2
    stem = 2 * image_tokens * PATCH * PATCH * 3 * WIDTH
    towers = stem + DEPTH * block(image_tokens + 1) + DEPTH * block(CONTEXT)
    projections = 2 * 2 * WIDTH * WIDTH
    logits = 2 * BATCH * WIDTH  # this example's row of the similarity matrix
    return 3.0 * (towers + projections + logits)


def batch_arrays():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((BATCH, IMAGE, IMAGE, 3), np.float32)
    tokens = rng.integers(1, VOCAB - 1, (BATCH, CONTEXT)).astype(np.int32)
    tokens[np.arange(BATCH), rng.integers(2, CONTEXT, BATCH)] = VOCAB - 1  # one end-of-text each
    return images, tokens


def jax_step(dtype_mm: str):
    """(run, flops per step from XLA's cost analysis, [state]) of our jitted training step; run
    steps the state held in the one-element list."""
    tower = dict(variant=None, width=WIDTH, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, act=ACT,
                 layer_norm_eps=EPS, dtype_mm=dtype_mm)
    model = two_towers.Model(
        image=dict(tower, patch_size=PATCH, image_size=IMAGE, patch_bias=False, ln_pre=True),
        text=dict(tower, vocab_size=VOCAB, context_length=CONTEXT, eot_id=VOCAB - 1),
        out_dim=WIDTH)
    images, tokens = batch_arrays()
    batch = {"image": jnp.asarray(images), "tokens": jnp.asarray(tokens)}
    spec = train.TrainSpec(model=model, example_inputs=(images, tokens),
                           loss_fn=objectives.contrastive_loss, train_source=None,
                           train_operations=(), worker_count=0)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, tokens)["params"])
    config = ml_collections.ConfigDict(dict(optimizer="adamw", lr=LR, wd=WD, decay="constant"))
    tx, _ = optim.make_optimizer(config, params, total_steps=1_000_000)
    frozen = optim.frozen_mask(config, params)
    state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                 rng=jax.random.key_data(jax.random.key(0)))
    step = jax.jit(train.make_train_step(spec, tx, frozen, accum_steps=1), donate_argnums=(0,))
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    carry = [state]

    def run():
        carry[0], metrics = compiled(carry[0], batch)
        return float(metrics["loss"])

    return run, float(cost["flops"]), carry


def torch_step(threads: int):
    """A run of PyTorch CLIPModel forward + backward + AdamW on the same config and batch."""
    import torch
    import transformers
    torch.manual_seed(0)
    tower = dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH,
                 num_attention_heads=HEADS, hidden_act=ACT, layer_norm_eps=EPS)
    config = transformers.CLIPConfig(
        vision_config=dict(tower, image_size=IMAGE, patch_size=PATCH),
        text_config=dict(tower, vocab_size=VOCAB, max_position_embeddings=CONTEXT,
                         eos_token_id=VOCAB - 1, bos_token_id=0, pad_token_id=0),
        projection_dim=WIDTH)
    model = transformers.CLIPModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    images, tokens = batch_arrays()
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(tokens.astype(np.int64))

    def run():
        torch.set_num_threads(threads)  # Process-wide: set on every run, contenders differ.
        loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return run


def matmul_peak():
    """(run, FLOPs per run) of a jitted 2048² fp32 `jnp.dot`."""
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.standard_normal((PEAK_SIZE, PEAK_SIZE), np.float32))
            for _ in range(2))
    dot = jax.jit(jnp.dot)
    return (lambda: dot(a, b).block_until_ready()), 2.0 * PEAK_SIZE**3


def repeat(run, steps):
    for _ in range(steps):
        result = run()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="torch.set_num_threads of each PyTorch contender; the first is the "
                             "baseline (add 1 on a busy machine: 2 OpenMP threads collapse there)")
    parser.add_argument("--bf16", action="store_true", help="also time ours with bf16 matmuls")
    args = parser.parse_args()
    load_before = os.getloadavg()

    ours_fp32, flops_per_step, _ = jax_step("float32")
    steps = {f"PyTorch CLIPModel {n} thread{'s' * (n > 1)}": torch_step(n) for n in args.threads}
    baseline_name = next(iter(steps))
    steps["wlsft_jax fp32"] = ours_fp32
    if args.bf16:
        steps["wlsft_jax bf16 matmuls"] = jax_step("bfloat16")[0]
    peak_run, peak_flops = matmul_peak()
    contenders = {name: functools.partial(repeat, run, args.steps) for name, run in steps.items()}
    contenders["peak"] = functools.partial(repeat, peak_run, 5)
    start = time.perf_counter()
    seconds, _ = interleaved_medians(contenders, args.repeats, settle_seconds=0.5)
    elapsed = time.perf_counter() - start
    load_after = os.getloadavg()

    peak = 5 * peak_flops / seconds.pop("peak")
    analytic = analytic_flops_per_example() * BATCH
    baseline = args.steps / seconds[baseline_name]
    print(f"command: PYTHONPATH=. python benchmarks/train_step.py --repeats {args.repeats} "
          f"--steps {args.steps} --threads {' '.join(map(str, args.threads))}"
          f"{' --bf16' if args.bf16 else ''}")
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"load average 1/5/15 min before {load_before[0]:.1f}/{load_before[1]:.1f}/"
          f"{load_before[2]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}/"
          f"{load_after[2]:.1f} ({elapsed:.0f} s timed)")
    print(f"matmul peak ({PEAK_SIZE}² fp32 jnp.dot, median): {peak / 1e9:.1f} GFLOP/s")
    print(f"model FLOPs per step: XLA cost analysis {flops_per_step / 1e9:.1f} G, analytic "
          f"matmuls {analytic / 1e9:.1f} G ({flops_per_step / analytic:.2f}x); MFU uses analytic")
    print(f"{'implementation':<30} {'steps/s':>8} {'examples/s':>11} {'vs baseline':>11} "
          f"{'GFLOP/s':>8} {'MFU':>6}")
    for name, sec in seconds.items():
        steps_per_second = args.steps / sec
        achieved = analytic * steps_per_second
        print(f"{name:<30} {steps_per_second:>8.2f} {steps_per_second * BATCH:>11.1f} "
              f"{steps_per_second / baseline:>10.2f}x {achieved / 1e9:>8.1f} "
              f"{achieved / peak:>6.1%}")
    for name in steps:
        if name.startswith("PyTorch"):
            print(f"ratio {seconds[name] / seconds['wlsft_jax fp32']:.2f}x vs {name}")


if __name__ == "__main__":
    main()
