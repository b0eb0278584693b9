"""Image-tower inference: images/s and MFU of the ViT forward (zero-shot, k-NN features, sweeps).

    PYTHONPATH=. python benchmarks/inference.py                       # ViT-B/16, 224 px, fp32
    PYTHONPATH=. python benchmarks/inference.py --dtype bfloat16 --batch 256   # an accelerator
    PYTHONPATH=. python benchmarks/inference.py --torch               # also transformers, CPU

The forward is the project's own `vit.Model` (CLIP's layout as `convert.from_hf_clip` builds it:
pre-LayerNorm, no patch bias, quick_gelu), jitted, returning the final-norm class token, on
random images. FLOPs are counted analytically (matmuls only: patch embedding, q/k/v/out, MLP,
q k^T and probs v). MFU is over a square `jnp.dot` in the same dtype timed interleaved with it
(8192² on an accelerator, 2048² on CPU). With `--torch`, `transformers.CLIPVisionModel` of the
same size (random weights, `torch.inference_mode`, fp32, as many threads as JAX's CPU client)
runs interleaved with ours, and the last line reads `ratio <R>x vs transformers`.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from interleaved_timing import interleaved_medians
from wlsft_jax.models import vit


def image_tower(variant: str, image_size: int, dtype: str) -> vit.Model:
    return vit.Model(variant=variant, image_size=image_size, dtype_mm=dtype, act="quick_gelu",
                     layer_norm_eps=1e-5, patch_bias=False, ln_pre=True)


def analytic_flops(model: vit.Model, batch: int) -> float:
    """Matmul FLOPs of one forward of `batch` images (biases, norms and softmax excluded)."""
    sizes = model.sizes()
    width, mlp, patch = sizes["width"], sizes["mlp_dim"], sizes["patch_size"]
    tokens = (model.image_size // patch) ** 2 + 1
    stem = 2 * (tokens - 1) * patch * patch * model.channels * width
    projections = 2 * tokens * width * (4 * width + 2 * mlp)
    attention = 2 * 2 * tokens * tokens * width
    return float(batch * (stem + sizes["depth"] * (projections + attention)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time transformers (CPU)")
    args = parser.parse_args()

    device = jax.devices()[0]
    model = image_tower(args.variant, args.image_size, args.dtype)
    images = jax.random.normal(jax.random.key(0), (args.batch, args.image_size,
                                                   args.image_size, 3), jnp.float32)
    params = jax.jit(lambda: model.init(jax.random.key(1), images[:1])["params"])()
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[1]["encoded"][:, 0])
    peak_size = 2048 if device.platform == "cpu" else 8192
    a, b = (jax.random.normal(jax.random.key(i), (peak_size, peak_size), args.dtype)
            for i in range(2))
    dot = jax.jit(jnp.dot)
    contenders = {"ours": lambda: forward(params, images).block_until_ready(),
                  "peak": lambda: dot(a, b).block_until_ready()}
    if args.torch:
        contenders["transformers"] = torch_forward(args)
    seconds, _ = interleaved_medians(contenders, args.repeats, settle_seconds=0.2)

    flops = analytic_flops(model, args.batch)
    peak = 2.0 * peak_size**3 / seconds["peak"]
    print(f"device: {device.device_kind} ({device.platform}); {args.variant} at "
          f"{args.image_size} px, batch {args.batch}, {args.dtype}; median of {args.repeats}")
    print(f"peak: {peak_size}² {args.dtype} jnp.dot, {peak / 1e12:.3f} TFLOP/s")
    print("| contender | ms / batch | images/s | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|")
    for name in [n for n in contenders if n != "peak"]:
        achieved = flops / seconds[name]
        print(f"| {name} | {1e3 * seconds[name]:.1f} | {args.batch / seconds[name]:.1f} | "
              f"{achieved / 1e12:.3f} | {achieved / peak:.1%} |")
    if args.torch:
        print(f"ratio {seconds['transformers'] / seconds['ours']:.2f}x vs transformers")


def torch_forward(args):
    """transformers' CLIPVisionModel of the same size, random weights, fp32 on CPU."""
    import torch
    import transformers

    sizes = vit.parse_variant(args.variant)
    torch.set_num_threads(os.cpu_count())
    config = transformers.CLIPVisionConfig(
        hidden_size=sizes["width"], intermediate_size=sizes["mlp_dim"],
        num_hidden_layers=sizes["depth"], num_attention_heads=sizes["num_heads"],
        image_size=args.image_size, patch_size=sizes["patch_size"])
    model = transformers.CLIPVisionModel(config).eval()
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (args.batch, 3, args.image_size, args.image_size), np.float32))

    def run():
        with torch.inference_mode():
            return model(pixel_values=pixels).pooler_output
    return run


if __name__ == "__main__":
    main()
