"""CLIP text transformer: causal pre-norm blocks, pooled at the end-of-text token, projected.

Token ids are validated on the Python side when they are concrete (`check_tokens`); inside
`jax.jit` they are tracers and cannot be checked, and an id >= vocab_size then embeds as NaN.
Call `check_tokens` on the host batch before a jitted step to keep the clear error.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wlsft_jax.models import blocks, vit


def check_tokens(tokens, vocab_size: int) -> None:
    """Raises ValueError when concrete `tokens` hold ids outside [0, vocab_size)."""
    ids = np.asarray(tokens)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise ValueError(f"Token ids must lie in [0, {vocab_size}) (the text tower's vocabulary); "
                         f"got {sorted(set(bad.tolist()))[:10]}. Use the tokenizer the model was "
                         "built for, or a matching vocab_size.")


def check_inputs(module: nn.Module, tokens) -> dict:
    """Validates a text encoder's settings and `tokens` [B, L]; returns its sizes.

    Shared by the CLIP text tower and the BERT encoder (both have `act`, `context_length`,
    `vocab_size` and `sizes()`).
    """
    blocks.check_choice("act", module.act, blocks.ACTIVATIONS)
    if tokens.ndim != 2 or tokens.shape[1] > module.context_length:
        raise ValueError(f"Expected tokens [batch, length <= {module.context_length}], got shape "
                         f"{tuple(tokens.shape)}.")
    if not isinstance(tokens, jax.core.Tracer):
        check_tokens(tokens, module.vocab_size)
    return module.sizes()


class Model(nn.Module):
    """Text tower: `apply({"params": p}, tokens int32[B, L]) -> (features, out)`.

    Pools at the first position where token == `eot_id`, or at the argmax of the ids when
    `eot_id` is None (CLIP's end-of-text id is the largest). `out` holds "stem" (token + position
    embeddings), "block{i}", "encoded" (final-norm tokens), "pooled" and "pre_logits" (= features).
    `scan` and `remat_policy` are the memory levers of `vit.Model` (see `blocks.encoder_blocks`).
    """
    vocab_size: int
    variant: str | None = "mu"
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    context_length: int = 77
    eot_id: int | None = None
    act: str = "gelu"
    layer_norm_eps: float = 1e-5
    proj_dim: int | None = None
    dtype_mm: str = "float32"
    scan: bool = False
    remat_policy: str = "none"

    @nn.nowrap
    def sizes(self) -> dict:
        """width, depth, mlp_dim, num_heads after applying the variant."""
        return vit.resolve_size(self, self.variant, with_patch=False)

    @nn.compact
    def __call__(self, tokens):
        sizes = check_inputs(self, tokens)
        width = sizes["width"]
        out = {}

        x = nn.Embed(self.vocab_size, width, name="token_embedding",
                     embedding_init=blocks.partitioned(nn.initializers.normal(0.02), "vocab",
                                                    "embed"))(tokens)
        posemb = self.param("pos_embedding", blocks.partitioned(nn.initializers.normal(0.01), None,
                                                             None, "embed"),
                            (1, self.context_length, width))
        x = out["stem"] = x + posemb[:, :tokens.shape[1]]

        x = blocks.encoder_blocks(x, out, depth=sizes["depth"], scan=self.scan,
                               remat_policy=self.remat_policy, num_heads=sizes["num_heads"],
                               mlp_dim=sizes["mlp_dim"], act=self.act,
                               layer_norm_eps=self.layer_norm_eps, causal=True,
                               dtype_mm=self.dtype_mm)
        x = out["encoded"] = blocks.layer_norm(self.layer_norm_eps, "encoder_norm")(x)

        if self.eot_id is None:
            eot_position = jnp.argmax(tokens, axis=1)
        else:
            eot_position = jnp.argmax(tokens == self.eot_id, axis=1)
        x = out["pooled"] = jnp.take_along_axis(x, eot_position[:, None, None], axis=1)[:, 0]

        if self.proj_dim:
            x = blocks.dense(self.proj_dim, ("embed", "joint"), self.dtype_mm, "proj",
                          use_bias=False, kernel_init=nn.initializers.normal(width**-0.5))(x)
        features = out["pre_logits"] = x.astype(jnp.float32)
        return features, out
