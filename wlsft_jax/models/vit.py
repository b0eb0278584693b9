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
(REMAT_POLICIES), and `scan=True` runs the blocks as one `nn.scan`, whose params are stacked
along a leading "layers" axis under `encoderblock/` (one compiled block instead of `depth`).
`vit_params.stack_layers` / `unstack_layers` convert params between the two layouts.
"""
from collections.abc import Mapping, Sequence
import math

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax.models import adapters

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
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # PyTorch / HF "gelu" (erf).
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # flax / big_vision default.
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),  # OpenAI CLIP.
}
POOLS = ("cls", "mean", "map")
RESIZE_METHODS = ("bilinear", "bicubic")
# remat_policy -> what the backward pass keeps of each block (None: no rematerialisation).
REMAT_POLICIES = {
    "none": None,  # Every activation: fastest, most memory.
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Outputs of the
    # weight matmuls (qkv, out, fc1, fc2); attention, norms and activations are recomputed.
    "full": jax.checkpoint_policies.nothing_saveable,  # Only the block's input; all recomputed.
}
STACKED_BLOCKS = "encoderblock"  # Param name of the scanned blocks (as in big_vision).


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


def check_choice(name: str, value, choices) -> None:
    """Raises ValueError naming the field and its valid choices when `value` is not one."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {list(choices)}.")


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


def partitioned(init, *names):
    """`init` whose params carry the logical axis `names`."""
    return nn.with_logical_partitioning(init, names)


def layer_norm(epsilon: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, name=name,
                        scale_init=partitioned(nn.initializers.ones, "embed"),
                        bias_init=partitioned(nn.initializers.zeros, "embed"))


def dense(features: int, axes: tuple, dtype, name: str, use_bias: bool = True,
          kernel_init=nn.initializers.xavier_uniform()) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=partitioned(kernel_init, *axes),
                    bias_init=partitioned(nn.initializers.normal(1e-6), axes[-1]))


def dot_product_attention(query, key, value, *, causal: bool):
    """softmax(q k^T / sqrt(head_dim)) v over [B, L, heads, head_dim] inputs.

    Written out rather than `jax.nn.dot_product_attention`, whose XLA path differentiates a
    hand-made exp/sum softmax: `jax.nn.softmax`'s own derivative and the scale folded into the
    queries make the training step ~4 % faster on CPU (benchmarks/train_step.py). Logits and
    softmax are float32 whatever the matmul dtype.
    """
    query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    logits = jnp.einsum("bqnh,bknh->bnqk", query, key, preferred_element_type=jnp.float32)
    if causal:
        visible = jnp.tril(jnp.ones(logits.shape[-2:], bool))  # Query i sees keys 0..i.
        logits = jnp.where(visible, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probs, value)


class Attention(nn.Module):
    """Multi-head dot-product attention with one fused qkv projection.

    Params: `qkv/kernel` [D, 3, heads, head_dim], `qkv/bias` [3, heads, head_dim], `out/kernel`
    [heads, head_dim, D], `out/bias` [D]. Called with `inputs_kv`, queries come from `inputs_q`
    and keys/values from `inputs_kv` through the same weights (used by the MAP head).
    """
    num_heads: int
    causal: bool = False
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None):
        width = inputs_q.shape[-1]
        head_dim = width // self.num_heads
        qkv_proj = nn.DenseGeneral(
            (3, self.num_heads, head_dim), dtype=self.dtype_mm, name="qkv",
            kernel_init=partitioned(nn.initializers.xavier_uniform(), "embed", None, "heads", "kv"),
            bias_init=partitioned(nn.initializers.zeros, None, "heads", "kv"))
        qkv = qkv_proj(inputs_q)  # [B, L, 3, heads, head_dim]
        query = qkv[:, :, 0]
        if inputs_kv is not None:
            qkv = qkv_proj(inputs_kv)
        key, value = qkv[:, :, 1], qkv[:, :, 2]
        attended = dot_product_attention(query, key, value, causal=self.causal)
        return nn.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype_mm, name="out",
            kernel_init=partitioned(nn.initializers.xavier_uniform(), "heads", "kv", "embed"),
            bias_init=partitioned(nn.initializers.zeros, "embed"))(attended)


class MlpBlock(nn.Module):
    """Dense -> activation -> Dense (`fc1`, `fc2`)."""
    mlp_dim: int
    act: str = "gelu"
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x):
        y = dense(self.mlp_dim, ("embed", "mlp"), self.dtype_mm, "fc1")(x)
        y = ACTIVATIONS[self.act](y)
        return dense(x.shape[-1], ("mlp", "embed"), self.dtype_mm, "fc2")(y)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)).

    `adapter` (one block's settings from `adapters.block_settings`, or None) adds a FiLM, Token
    Replay or LoRA adapter under its own param name; each is the identity at init.
    """
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    layer_norm_eps: float = 1e-6
    causal: bool = False
    dtype_mm: str = "float32"
    adapter: Mapping | None = None

    @nn.compact
    def __call__(self, x):
        kind = self.adapter["name"] if self.adapter else None
        ln1 = layer_norm(self.layer_norm_eps, "ln1")
        y = ln1(x)
        attention_class = Attention
        if kind == "lora":
            delta = adapters.LoRA(self.adapter["rank"], self.adapter["scale"], name="lora")(
                (x.shape[-1], 3, self.num_heads, x.shape[-1] // self.num_heads))
            attention_class = adapters.with_lora(Attention, delta)
        attn = attention_class(self.num_heads, self.causal, self.dtype_mm, name="attn")
        attended = attn(y)
        if kind == "token_replay":
            attended = attended + adapters.TokenReplay(
                self.adapter["num_tokens"], self.dtype_mm, name="replay")(
                    y, ln1, nn.unbox(attn.variables["params"]))
        x = x + attended
        y = layer_norm(self.layer_norm_eps, "ln2")(x)
        x = x + MlpBlock(self.mlp_dim, self.act, self.dtype_mm, name="mlp")(y)
        if kind == "film":
            x = adapters.FiLM(name="film")(x)
        return x


class ScannedBlock(EncoderBlock):
    """An `EncoderBlock` as an `nn.scan` body: (tokens, None) -> (tokens, tokens)."""

    def __call__(self, x, _):
        x = super().__call__(x)
        return x, x


def encoder_blocks(x, out: dict, *, depth: int, scan: bool, remat_policy: str,
                   block_adapters: Sequence | None = None, **block_fields):
    """Runs `depth` pre-norm blocks on tokens `x`, looped or scanned, with `remat_policy`.

    Call it inside a compact module: the blocks become its `encoderblock_{i}` children, or one
    `encoderblock` child with stacked params when `scan`. Records each block's output in
    `out["block{i}"]`. `block_fields` are the EncoderBlock fields besides `adapter`, which
    `block_adapters` gives per block (scanned blocks are identical, so they take none).
    """
    check_choice("remat_policy", remat_policy, REMAT_POLICIES)
    policy = REMAT_POLICIES[remat_policy]
    block_adapters = block_adapters or [None] * depth
    if scan:
        if any(block_adapters):
            raise ValueError("scan=True runs identical blocks and cannot hold adapters; set "
                             "scan=False to use an adapter (remat_policy works with both).")
        body = ScannedBlock if policy is None else nn.remat(ScannedBlock, policy=policy,
                                                             prevent_cse=False)
        stack = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=depth, metadata_params={nn.PARTITION_NAME: "layers"})
        x, per_block = stack(**block_fields, name=STACKED_BLOCKS)(x, None)
        out.update({f"block{i}": per_block[i] for i in range(depth)})
        return x
    block = EncoderBlock if policy is None else nn.remat(EncoderBlock, policy=policy)
    for i in range(depth):
        x = out[f"block{i}"] = block(**block_fields, adapter=block_adapters[i],
                                     name=f"encoderblock_{i}")(x)
    return x


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
    `remat_policy` (one of REMAT_POLICIES) trades compute for activation memory in training;
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
        block_adapters = adapters.block_settings(self.adapter, sizes["depth"])
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
                           remat_policy=self.remat_policy, block_adapters=block_adapters,
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

