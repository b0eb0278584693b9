"""Vision Transformer covering CLIP image towers, DINO and AugReg ViTs.

One module, configured by fields: CLIP towers use `ln_pre=True`, `patch_bias=False`,
`act="quick_gelu"` and a bias-free projection to `proj_dim`; DINO / AugReg use the defaults
(class token, learned position embedding, final LayerNorm). The class token carries no position
embedding of its own (as in big_vision): checkpoints whose table has a class-token row are folded
into `cls` by the converters.

Params carry logical axis names ("embed", "mlp", "heads", "kv", "joint", "classes") so that
`wlsft_jax.sharding` can place them; `nn.unbox` turns an init result into plain arrays.

Two memory levers, both off by default (the param layout of checkpoints and converters):
`remat_policy` recomputes a block's activations in the backward pass instead of keeping them
(`blocks.REMAT_POLICIES`), and `scan=True` runs the blocks as one `nn.scan`, whose params are stacked
along a leading "layers" axis under `encoderblock/` (one compiled block instead of `depth`).
`vit_params.stack_layers` / `unstack_layers` convert params between the two layouts.
"""
from collections.abc import Mapping
import math

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax.models import adapters
from wlsft_jax.models.blocks import (ACTIVATIONS, Attention, MlpBlock, check_choice, dense,
                                     encoder_blocks, layer_norm, partitioned)

# name -> (width, depth, mlp_dim, num_heads); "mu" is the tiny tower for the embedded 32-px world.
VARIANTS = {
    "mu": (128, 4, 512, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
POOLS = ("cls", "mean", "map")
RESIZE_METHODS = ("bilinear", "bicubic")

def parse_variant(variant: str, *, with_patch: bool = True) -> dict:
    """"B/16" -> dict(width, depth, mlp_dim, num_heads, patch_size); "B" when `with_patch=False`."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or (with_patch and not patch.isdigit()) or (not with_patch and patch):
        form = "NAME/PATCH, e.g. 'B/16'" if with_patch else "NAME, e.g. 'B'"
        raise ValueError(f"Unknown variant {variant!r}: expected {form} with NAME one of "
                         f"{sorted(VARIANTS)}.")
    width, depth, mlp_dim, num_heads = VARIANTS[name]
    config = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    if with_patch:
        config["patch_size"] = int(patch)
    return config


def resolve_size(module: nn.Module, variant: str | None, *, with_patch: bool = True) -> dict:
    """Architecture sizes: the variant's, overridden by any size field the module sets."""
    names = ("width", "depth", "mlp_dim", "num_heads") + (("patch_size",) if with_patch else ())
    sizes = parse_variant(variant, with_patch=with_patch) if variant else {}
    sizes.update({n: getattr(module, n) for n in names if getattr(module, n) is not None})
    missing = [n for n in names if n not in sizes]
    if missing:
        raise ValueError(f"{type(module).__name__}: no variant given and size fields {missing} "
                         f"unset; set them or pick a variant from {sorted(VARIANTS)}.")
    if sizes["width"] % sizes["num_heads"]:
        raise ValueError(f"width {sizes['width']} is not divisible by num_heads "
                         f"{sizes['num_heads']}; choose heads dividing the width.")
    return sizes


def resample_posemb(posemb, grid: tuple[int, int], method: str = "bilinear"):
    """Resizes a [1, h*w, D] position embedding of a square h x w grid to `grid` (logged)."""
    check_choice("position-embedding resize method", method, RESIZE_METHODS)
    old_side = math.isqrt(posemb.shape[1])
    if old_side * old_side != posemb.shape[1]:
        raise ValueError(f"Position embedding with {posemb.shape[1]} entries is not a square grid; "
                         "only square grids can be resampled.")
    if (old_side, old_side) == tuple(grid):
        return posemb
    logging.info("ViT: resampling position embedding from %dx%d to %dx%d (%s).",
                 old_side, old_side, *grid, method)
    table = jnp.reshape(posemb, (old_side, old_side, posemb.shape[-1]))
    table = jax.image.resize(table, (*grid, posemb.shape[-1]), method=method)
    return jnp.reshape(table, (1, grid[0] * grid[1], posemb.shape[-1])).astype(posemb.dtype)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens (big_vision)."""
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    layer_norm_eps: float = 1e-6
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", partitioned(nn.initializers.xavier_uniform(), None, None,
                                                "embed"), (1, 1, x.shape[-1]))
        probe = jnp.broadcast_to(probe, (x.shape[0], 1, x.shape[-1]))
        x = Attention(self.num_heads, dtype_mm=self.dtype_mm, name="attn")(probe, x)
        y = layer_norm(self.layer_norm_eps, "ln")(x)
        x = x + MlpBlock(self.mlp_dim, self.act, self.dtype_mm, name="mlp")(y)
        return x[:, 0]


class Model(nn.Module):
    """ViT: `apply({"params": p}, images NHWC float32) -> (features, out)`.

    `features` is the pooled token, projected to `proj_dim` when set (CLIP). `out` holds "stem"
    (patch embeddings), "block{i}" (tokens after block i), "encoded" (final-norm tokens),
    "pooled", "pre_logits" (= features) and, with `num_classes`, "logits".

    Fields: `variant` "NAME/PATCH" (see VARIANTS) sets width/depth/mlp_dim/num_heads/patch_size;
    any of those set explicitly wins. `image_size` fixes the position-embedding grid (None: the
    grid of the images given to `init`); other input sizes get it resampled with `posemb_resize`
    (logged). `pool` is "cls", "mean" (over patch
    tokens) or "map". `act` is one of ACTIVATIONS. `dtype_mm="bfloat16"` runs matmuls in bf16
    while params, norms, softmax and the residual stream stay float32. `adapter` adds FiLM, Token
    Replay or LoRA adapters to a range of blocks, e.g. dict(name="film", blocks=(8, 12)) (see
    `adapters`); with adapters, `out["embedded"]` holds the tokens entering block 0.
    `remat_policy` (one of `blocks.REMAT_POLICIES`) trades compute for activation memory in training;
    `scan=True` stacks the blocks' params under `encoderblock/` (see `vit_params.stack_layers`)
    and cannot be combined with `adapter`.
    """
    variant: str | None = "mu/4"
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    image_size: int | None = None
    channels: int = 3
    patch_bias: bool = True
    class_token: bool = True
    ln_pre: bool = False
    act: str = "gelu"
    layer_norm_eps: float = 1e-6
    pool: str = "cls"
    proj_dim: int | None = None
    num_classes: int | None = None
    posemb_resize: str = "bilinear"
    dtype_mm: str = "float32"
    adapter: Mapping | None = None
    scan: bool = False
    remat_policy: str = "none"

    @nn.nowrap
    def sizes(self) -> dict:
        """width, depth, mlp_dim, num_heads, patch_size after applying the variant."""
        return resolve_size(self, self.variant)

    @nn.nowrap
    def check_images(self, images) -> tuple[int, int]:
        """Raises ValueError for images the model cannot take; returns the patch grid."""
        patch = self.sizes()["patch_size"]
        if self.image_size and self.image_size % patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by the patch size "
                             f"{patch}; use a multiple of {patch}.")
        if images.ndim != 4 or images.shape[-1] != self.channels:
            raise ValueError(f"Expected images [batch, height, width, {self.channels}] (NHWC), "
                             f"got shape {tuple(images.shape)}.")
        height, width = images.shape[1:3]
        if height % patch or width % patch:
            raise ValueError(f"Image size {height}x{width} is not divisible by the patch size "
                             f"{patch}; use sides that are multiples of {patch}.")
        return height // patch, width // patch

    @nn.compact
    def __call__(self, images):
        check_choice("pool", self.pool, POOLS)
        check_choice("act", self.act, ACTIVATIONS)
        if self.pool == "cls" and not self.class_token:
            raise ValueError("pool='cls' needs class_token=True; or choose pool from "
                             f"{[p for p in POOLS if p != 'cls']}.")
        sizes = self.sizes()
        block_types = adapters.block_types(self.adapter, sizes["depth"])
        width, patch = sizes["width"], sizes["patch_size"]
        grid = self.check_images(images)
        out = {}

        x = nn.Conv(width, (patch, patch), strides=(patch, patch), padding="VALID",
                    use_bias=self.patch_bias, dtype=self.dtype_mm, name="embedding",
                    kernel_init=partitioned(nn.initializers.lecun_normal(), None, None, None,
                                            "embed"),
                    bias_init=partitioned(nn.initializers.zeros, "embed"))(images)
        x = out["stem"] = jnp.reshape(x, (x.shape[0], -1, width))

        init_grid = (self.image_size // patch,) * 2 if self.image_size else grid
        posemb = self.param("pos_embedding", partitioned(nn.initializers.normal(width**-0.5),
                                                         None, None, "embed"),
                            (1, init_grid[0] * init_grid[1], width))
        x = x + resample_posemb(posemb, grid, self.posemb_resize)
        if self.class_token:
            cls = self.param("cls", partitioned(nn.initializers.zeros, None, None, "embed"),
                             (1, 1, width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, width)), x], axis=1)
        if self.ln_pre:
            x = layer_norm(self.layer_norm_eps, "ln_pre")(x)
        if self.adapter:
            out["embedded"] = x

        x = encoder_blocks(x, out, depth=sizes["depth"], scan=self.scan,
                           remat_policy=self.remat_policy, block_types=block_types,
                           num_heads=sizes["num_heads"], mlp_dim=sizes["mlp_dim"], act=self.act,
                           layer_norm_eps=self.layer_norm_eps, dtype_mm=self.dtype_mm)
        x = out["encoded"] = layer_norm(self.layer_norm_eps, "encoder_norm")(x)

        if self.pool == "cls":
            x = x[:, 0]
        elif self.pool == "mean":
            x = jnp.mean(x[:, int(self.class_token):], axis=1)
        else:
            x = MAPHead(sizes["num_heads"], sizes["mlp_dim"], self.act, self.layer_norm_eps,
                        self.dtype_mm, name="map_head")(x)
        out["pooled"] = x

        if self.proj_dim:
            x = dense(self.proj_dim, ("embed", "joint"), self.dtype_mm, "proj", use_bias=False,
                      kernel_init=nn.initializers.normal(width**-0.5))(x)
        features = out["pre_logits"] = x.astype(jnp.float32)
        if self.num_classes:
            feature_axis = "joint" if self.proj_dim else "embed"
            out["logits"] = dense(self.num_classes, (feature_axis, "classes"),
                                  self.dtype_mm, "head",
                                  kernel_init=nn.initializers.zeros)(features).astype(jnp.float32)
        return features, out

