"""Tiny CLIP training step: wlsft_jax two towers vs PyTorch `transformers.CLIPModel` on CPU.

Config of PERF_NOTES: image 32 px, patch 4, width 128, 4 + 4 blocks, 4 heads, text context 16,
batch 128, AdamW. Repeats alternate between implementations (`interleaved_timing`) so machine
load affects all alike; prints the median examples/s and the ratio to PyTorch.

    PYTHONPATH=. python benchmarks/clip_train_step.py [--repeats 7] [--steps 5] [--threads 2]
"""
import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from interleaved_timing import interleaved_medians
from wlsft_jax.models import two_towers

BATCH, IMAGE, CONTEXT, VOCAB, WIDTH, MLP, HEADS, DEPTH, PATCH = 128, 32, 16, 1000, 128, 512, 4, 4, 4


def jax_step_fn(dtype_mm: str):
    """A jitted AdamW step of our two towers on the symmetric contrastive loss."""
    tower = dict(variant=None, width=WIDTH, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS,
                 dtype_mm=dtype_mm)
    model = two_towers.Model(image=dict(tower, patch_size=PATCH, image_size=IMAGE),
                             text=dict(tower, vocab_size=VOCAB, context_length=CONTEXT),
                             out_dim=WIDTH)
    images = jnp.asarray(np.random.RandomState(0).randn(BATCH, IMAGE, IMAGE, 3), jnp.float32)
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, VOCAB, (BATCH, CONTEXT)), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, tokens)["params"])
    tx = optax.adamw(1e-4)
    state = tx.init(params)

    def loss_fn(p):
        zimg, ztxt, out = model.apply({"params": p}, images, tokens)
        logits = zimg @ ztxt.T * out["temperature"]
        labels = jnp.arange(BATCH)
        return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    carry = [params, state]

    def run():
        carry[0], carry[1], loss = step(*carry)
        loss.block_until_ready()
    return run


def torch_step_fn(threads: int):
    import torch
    import transformers
    torch.set_num_threads(threads)
    tower = dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=DEPTH,
                 num_attention_heads=HEADS)
    config = transformers.CLIPConfig(
        vision_config=dict(tower, image_size=IMAGE, patch_size=PATCH),
        text_config=dict(tower, vocab_size=VOCAB, max_position_embeddings=CONTEXT,
                         eos_token_id=VOCAB - 1, bos_token_id=0, pad_token_id=0),
        projection_dim=WIDTH)
    model = transformers.CLIPModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(BATCH, 3, IMAGE, IMAGE)
    tokens = torch.randint(0, VOCAB, (BATCH, CONTEXT))

    def run():
        loss = model(input_ids=tokens, pixel_values=images, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return run


def run_steps(run, steps: int) -> None:
    for _ in range(steps):
        run()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runs = {"PyTorch CLIPModel (baseline)": torch_step_fn(args.threads),
            "wlsft_jax fp32": jax_step_fn("float32"),
            "wlsft_jax bf16 matmuls": jax_step_fn("bfloat16")}
    contenders = {name: functools.partial(run_steps, run, args.steps) for name, run in runs.items()}
    seconds, _ = interleaved_medians(contenders, args.repeats)
    throughput = {name: args.steps * BATCH / s for name, s in seconds.items()}
    baseline = next(iter(throughput.values()))
    print(f"command: python benchmarks/clip_train_step.py --repeats {args.repeats} "
          f"--steps {args.steps} --threads {args.threads}")
    print(f"{'implementation':<32} {'examples/s (median)':>20} {'vs PyTorch':>11}")
    for name, value in throughput.items():
        print(f"{name:<32} {value:>20.1f} {value / baseline:>10.2f}x")


if __name__ == "__main__":
    main()
