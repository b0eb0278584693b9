"""Adapters for a pretrained ViT: FiLM, Token Replay and LoRA, each the identity at init.

Weak language supervision (WLS) tunes a vision-only encoder against a text encoder through small
adapters, so that interpolating the adapter weights (`alpha * tuned + (1 - alpha) * pretrained`)
sweeps from the pretrained encoder to the tuned one. Every adapter starts as the exact identity:
an adapted encoder at init gives bitwise the pretrained outputs.

Each adapter is an encoder block that wraps `blocks.EncoderBlock` (a subclass adding to its
attention or its output), chosen by a config dict on `vit.Model(adapter=...)`:

    dict(name="token_replay", blocks=(8, 12), num_tokens=4)
    dict(name="film")                       # every block
    dict(name="lora", rank=8, scale=1.0)

`blocks` is a (start, stop) range of block indices (stop exclusive, None: every block). Adapter
params live under new names next to the block's pretrained ones, so pretrained checkpoints load
unchanged: `encoderblock_{i}/film/...`, `encoderblock_{i}/replay/...`, `encoderblock_{i}/lora/...`
(a schedule rule such as `(".*/(film|replay|lora)/.*", {})` trains exactly them).

- FiLM: per block, per channel scale and shift of the block's output tokens,
  h <- h * (1 + gamma) + beta, gamma = beta = 0 at init.
- Token Replay: per block, `num_tokens` learned tokens are replayed into the block's attention:
  every token also attends to them through a separate softmax, and that output, times a per-head
  gate that starts at 0, is added to the block's attention output (the zero-init gated attention
  of LLaMA-Adapter's adaption prompts). The replay tokens go through the block's own `ln1` and
  key/value projections, as if they were tokens of the sequence, and are not carried to the next
  block. `init_replay_tokens` sets them from the pretrained class token at that depth.
- LoRA: low-rank updates of the query and value projections, W <- W + scale * down @ up, `up` = 0
  at init. The update is merged into the fused qkv kernel on the fly (`nn.map_variables`), so the
  attention module itself is untouched; the cost is one extra [D, 3D] weight gradient per block.
"""
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax.models import blocks

# Adapter name -> its settings and their defaults (besides `name` and `blocks`).
ADAPTERS = {
    "film": {},
    "token_replay": {"num_tokens": 4},
    "lora": {"rank": 4, "scale": 1.0},
}
# Param-collection name of each adapter inside an encoder block.
PARAM_NAMES = {"film": "film", "token_replay": "replay", "lora": "lora"}
# Matches the params of every adapter (for optimizer schedules).
ADAPTER_PARAMS_REGEX = r".*/(film|replay|lora)/.*"


def _param(init, *names):
    return nn.with_logical_partitioning(init, names)


def block_settings(adapter: Mapping | None, depth: int) -> list[dict | None]:
    """Per block of a `depth`-block encoder: the adapter settings it gets, or None.

    Validates `adapter` (name, keys, sizes, block range); each returned dict holds `name` and
    every setting of that adapter, defaults filled in.
    """
    if adapter is None:
        return [None] * depth
    adapter = dict(adapter)
    name = adapter.pop("name", None)
    if name not in ADAPTERS:
        raise ValueError(f"Unknown adapter {name!r}; valid adapters: {sorted(ADAPTERS)} "
                         "(set adapter=dict(name=..., ...)).")
    blocks = adapter.pop("blocks", None)
    unknown = sorted(set(adapter) - set(ADAPTERS[name]))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for adapter {name!r}; valid settings: "
                         f"{sorted(['name', 'blocks', *ADAPTERS[name]])}.")
    settings = dict(ADAPTERS[name], **adapter, name=name)
    for size in ("num_tokens", "rank"):
        if size in settings and (not isinstance(settings[size], int) or settings[size] < 1):
            raise ValueError(f"Adapter {name!r}: {size} must be a positive integer, got "
                             f"{settings[size]!r}.")
    start, stop = (0, depth) if blocks is None else tuple(blocks)
    if not 0 <= start < stop <= depth:
        raise ValueError(f"Adapter blocks={blocks!r} is not a (start, stop) range of block "
                         f"indices with 0 <= start < stop <= depth={depth}.")
    return [settings if start <= i < stop else None for i in range(depth)]


def block_types(adapter: Mapping | None, depth: int) -> list[tuple | None]:
    """Per block of a `depth`-block encoder: (its adapter's block class, that adapter's
    settings), or None for a plain block (`blocks.encoder_blocks`'s `block_types`)."""
    return [None if settings is None else
            (BLOCKS[settings["name"]], {k: v for k, v in settings.items() if k != "name"})
            for settings in block_settings(adapter, depth)]


class FiLM(nn.Module):
    """h -> h * (1 + scale) + shift, per channel; scale = shift = 0 at init."""

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        scale = self.param("scale", _param(nn.initializers.zeros, "embed"), (width,))
        shift = self.param("shift", _param(nn.initializers.zeros, "embed"), (width,))
        return x * (1 + scale) + shift


class TokenReplay(nn.Module):
    """Gated attention of every token to `num_tokens` replayed tokens (0 at init).

    Called with the block's pre-normed tokens `y`, its `ln1` module and its attention params
    (`qkv/kernel` [D, 3, heads, head_dim], `qkv/bias`, `out/kernel` [heads, head_dim, D]); returns
    what to add to the block's attention output.
    """
    num_tokens: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, y, ln1, attn_params):
        width = y.shape[-1]
        qkv_kernel = attn_params["qkv"]["kernel"].astype(self.dtype_mm)
        qkv_bias = attn_params["qkv"]["bias"]
        out_kernel = attn_params["out"]["kernel"].astype(self.dtype_mm)
        num_heads = qkv_kernel.shape[2]
        tokens = self.param("tokens", _param(nn.initializers.normal(0.02), None, "embed"),
                            (self.num_tokens, width))
        gate = self.param("gate", _param(nn.initializers.zeros, "heads"), (num_heads,))

        project = lambda x, i: (jnp.einsum("...d,dhk->...hk", x.astype(self.dtype_mm),
                                           qkv_kernel[:, i]) + qkv_bias[i]).astype(jnp.float32)
        query = project(y, 0)  # [B, L, heads, head_dim]
        replay = ln1(tokens)
        key, value = project(replay, 1), project(replay, 2)  # [m, heads, head_dim]
        logits = jnp.einsum("blhk,mhk->bhlm", query, key) * query.shape[-1]**-0.5
        attended = jnp.einsum("bhlm,mhk->blhk", jax.nn.softmax(logits, axis=-1), value)
        gated = (attended * gate[:, None]).astype(self.dtype_mm)
        return jnp.einsum("blhk,hkd->bld", gated, out_kernel).astype(y.dtype)


class LoRA(nn.Module):
    """Low-rank deltas of the query and value slices of a fused qkv kernel (0 at init).

    Returns `delta` [D, 3, heads, head_dim] with zeros in the key slice:
    delta[:, 0] = scale * query_down @ query_up, delta[:, 2] = scale * value_down @ value_up.
    """
    rank: int
    scale: float = 1.0

    @nn.compact
    def __call__(self, qkv_shape):
        width, _, num_heads, head_dim = qkv_shape
        down_init = _param(nn.initializers.normal(self.rank**-0.5 * width**-0.5), "embed", None)
        up_init = _param(nn.initializers.zeros, None, "heads", "kv")
        deltas = {}
        for role in ("query", "value"):
            down = self.param(f"{role}_down", down_init, (width, self.rank))
            up = self.param(f"{role}_up", up_init, (self.rank, num_heads, head_dim))
            deltas[role] = self.scale * jnp.einsum("dr,rhk->dhk", down, up)
        return jnp.stack([deltas["query"], jnp.zeros_like(deltas["query"]), deltas["value"]],
                         axis=1)


class FiLMBlock(blocks.EncoderBlock):
    """The block, then FiLM of its output tokens."""

    @nn.compact
    def __call__(self, x):
        return FiLM(name="film")(super().__call__(x))


class TokenReplayBlock(blocks.EncoderBlock):
    """The block, its attention output plus the gated attention to replayed tokens."""
    num_tokens: int = 4

    def attention(self, y, ln1):
        attn = self.make_attention(blocks.Attention)
        attended = attn(y)
        return attended + TokenReplay(self.num_tokens, self.dtype_mm, name="replay")(
            y, ln1, nn.unbox(attn.variables["params"]))


class LoRABlock(blocks.EncoderBlock):
    """The block, its attention reading qkv/kernel + the LoRA delta."""
    rank: int = 4
    scale: float = 1.0

    def attention(self, y, ln1):
        del ln1
        width = y.shape[-1]
        delta = LoRA(self.rank, self.scale, name="lora")(
            (width, 3, self.num_heads, width // self.num_heads))
        return self.make_attention(with_lora(blocks.Attention, delta))(y)


# Adapter name -> the block that wraps the plain one with it.
BLOCKS = {"film": FiLMBlock, "token_replay": TokenReplayBlock, "lora": LoRABlock}


def with_lora(attention_class, delta):
    """`attention_class` whose `qkv/kernel` param is read as kernel + delta (stored unchanged)."""

    def add_delta(variables):
        params = variables["params"]
        kernel = params["qkv"]["kernel"]
        if isinstance(kernel, nn.meta.AxisMetadata):  # Boxed with its logical axes (init).
            kernel = kernel.replace_boxed(kernel.unbox() + delta)
        else:
            kernel = kernel + delta
        return dict(variables, params=dict(params, qkv=dict(params["qkv"], kernel=kernel)))

    return nn.map_variables(attention_class, "params", trans_in_fn=add_delta, init=True)


def init_replay_tokens(model, params, images, *, rng, noise_std: float = 0.02) -> dict:
    """Params whose replay tokens start as the pretrained class token at their block's depth.

    Runs the encoder on `images` (its adapters are the identity before training) and sets the
    tokens of block i to the batch mean of the class token entering block i (`out["embedded"]`
    for block 0, `out["block{i-1}"]` after), plus Gaussian noise of std `noise_std` so the tokens
    differ. `model` is a `vit.Model` with adapter "token_replay"; returns new params.
    """
    settings = block_settings(model.adapter, model.sizes()["depth"])
    if not any(s and s["name"] == "token_replay" for s in settings):
        raise ValueError(f"init_replay_tokens needs a model with adapter name 'token_replay'; "
                         f"this one has adapter={model.adapter!r}.")
    _, out = model.apply({"params": params}, images)
    params = dict(params)
    for i, block in enumerate(settings):
        if block is None:
            continue
        entering = out["embedded"] if i == 0 else out[f"block{i - 1}"]
        mean_cls = jnp.mean(entering[:, 0].astype(jnp.float32), axis=0)
        name = f"encoderblock_{i}"
        tokens = params[name]["replay"]["tokens"]
        noise = noise_std * jax.random.normal(jax.random.fold_in(rng, i), tokens.shape)
        replay = dict(params[name]["replay"], tokens=(mean_cls + noise).astype(tokens.dtype))
        params[name] = dict(params[name], replay=replay)
    return params
