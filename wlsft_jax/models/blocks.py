"""Transformer building blocks shared by the towers (ViT, the CLIP text tower, BERT): attention
with one fused qkv projection, the MLP, the pre-norm encoder block and the loop (or scan) over
blocks, with the memory lever `remat_policy`.

`EncoderBlock` is the plain block. Adapters (`models/adapters.py`) are subclasses that wrap it:
each adds to its `attention` or its output and keeps the block's own params where they are, so a
pretrained checkpoint loads into an adapted block unchanged.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # PyTorch / HF "gelu" (erf).
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # flax / big_vision default.
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),  # OpenAI CLIP.
}
# remat_policy -> what the backward pass keeps of each block (None: no rematerialisation).
REMAT_POLICIES = {
    "none": None,  # Every activation: fastest, most memory.
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Outputs of the
    # weight matmuls (qkv, out, fc1, fc2); attention, norms and activations are recomputed.
    "full": jax.checkpoint_policies.nothing_saveable,  # Only the block's input; all recomputed.
}
STACKED_BLOCKS = "encoderblock"  # Param name of the scanned blocks (as in big_vision).


def check_choice(name: str, value, choices) -> None:
    """Raises ValueError naming the field and its valid choices when `value` is not one."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {list(choices)}.")


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
    """Pre-norm transformer block: x + attention(ln1(x)), then x + mlp(ln2(x))."""
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    layer_norm_eps: float = 1e-6
    causal: bool = False
    dtype_mm: str = "float32"

    def attention(self, y, ln1):
        """The attention output of the pre-normed tokens `y` (`ln1` normed them): what an
        adapter wraps (it is called inside `__call__`, so it may create params)."""
        del ln1
        return self.make_attention(Attention)(y)

    def make_attention(self, attention_class):
        """The block's attention module "attn", of `attention_class` (Attention, or a wrapper of
        it that reads its params differently)."""
        return attention_class(self.num_heads, self.causal, self.dtype_mm, name="attn")

    @nn.compact
    def __call__(self, x):
        ln1 = layer_norm(self.layer_norm_eps, "ln1")
        x = x + self.attention(ln1(x), ln1)
        y = layer_norm(self.layer_norm_eps, "ln2")(x)
        return x + MlpBlock(self.mlp_dim, self.act, self.dtype_mm, name="mlp")(y)


class ScannedBlock(EncoderBlock):
    """An `EncoderBlock` as an `nn.scan` body: (tokens, None) -> (tokens, tokens)."""

    def __call__(self, x, _):
        x = super().__call__(x)
        return x, x


def encoder_blocks(x, out: dict, *, depth: int, scan: bool, remat_policy: str,
                   block_types: Sequence | None = None, **block_fields):
    """Runs `depth` pre-norm blocks on tokens `x`, looped or scanned, with `remat_policy`.

    Call it inside a compact module: the blocks become its `encoderblock_{i}` children, or one
    `encoderblock` child with stacked params when `scan`. Records each block's output in
    `out["block{i}"]`. `block_types` gives each block's (class, its own fields) (None or a None
    entry: `EncoderBlock`), e.g. an adapter's (`adapters.block_types`); scanned blocks are
    identical, so they take none. `block_fields` are the fields every block shares.
    """
    check_choice("remat_policy", remat_policy, REMAT_POLICIES)
    policy = REMAT_POLICIES[remat_policy]
    block_types = block_types or [None] * depth
    if scan:
        if any(block_types):
            raise ValueError("scan=True runs identical blocks and cannot hold adapters; set "
                             "scan=False to use an adapter (remat_policy works with both).")
        body = ScannedBlock if policy is None else nn.remat(ScannedBlock, policy=policy,
                                                             prevent_cse=False)
        stack = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=depth, metadata_params={nn.PARTITION_NAME: "layers"})
        x, per_block = stack(**block_fields, name=STACKED_BLOCKS)(x, None)
        out.update({f"block{i}": per_block[i] for i in range(depth)})
        return x
    for i, block_type in enumerate(block_types):
        block_class, own_fields = block_type or (EncoderBlock, {})
        if policy is not None:
            block_class = nn.remat(block_class, policy=policy)
        x = out[f"block{i}"] = block_class(**block_fields, **own_fields,
                                           name=f"encoderblock_{i}")(x)
    return x
