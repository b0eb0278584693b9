"""BERT-family sentence encoder (HF `BertModel` layout), mean-pooled over the attention mask.

The text tower of weak language supervision: e.g. sentence-transformers' all-MiniLM-L6-v2
(`wlsft_jax.convert.from_hf_bert`), whose sentence embedding is the mean of the final tokens over
the non-padding positions. Post-norm blocks as in BERT: x = ln1(x + attn(x)), x = ln2(x + mlp(x)).
Params reuse the ViT's block layout (fused `attn/qkv`, `attn/out`, `mlp/fc1`, `mlp/fc2`), with
`ln1` / `ln2` after the residual sums.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax.models import blocks, text, vit


class MaskedAttention(nn.Module):
    """Self-attention over the positions where `mask` is True (blocks.Attention's param layout)."""
    num_heads: int
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x, mask):
        width = x.shape[-1]
        qkv = nn.DenseGeneral(
            (3, self.num_heads, width // self.num_heads), dtype=self.dtype_mm, name="qkv",
            kernel_init=blocks.partitioned(nn.initializers.xavier_uniform(), "embed", None, "heads",
                                        "kv"),
            bias_init=blocks.partitioned(nn.initializers.zeros, None, "heads", "kv"))(x)
        attended = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                                mask=mask[:, None, None, :])
        return nn.DenseGeneral(
            width, axis=(-2, -1), dtype=self.dtype_mm, name="out",
            kernel_init=blocks.partitioned(nn.initializers.xavier_uniform(), "heads", "kv", "embed"),
            bias_init=blocks.partitioned(nn.initializers.zeros, "embed"))(attended)


class PostNormBlock(nn.Module):
    """BERT's block: x = ln1(x + attn(x)), then x = ln2(x + mlp(x))."""
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    layer_norm_eps: float = 1e-12
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x, mask):
        x = x + MaskedAttention(self.num_heads, self.dtype_mm, name="attn")(x, mask)
        x = blocks.layer_norm(self.layer_norm_eps, "ln1")(x)
        x = x + blocks.MlpBlock(self.mlp_dim, self.act, self.dtype_mm, name="mlp")(x)
        return blocks.layer_norm(self.layer_norm_eps, "ln2")(x)


class Model(nn.Module):
    """Sentence encoder: `apply({"params": p}, tokens int32[B, L], mask=None) -> (features, out)`.

    `mask` (bool [B, L], True for real tokens) defaults to `tokens != pad_id`. Every token has
    token type 0. `features` is the mean of the final tokens over the mask, projected to
    `proj_dim` when set. `out` holds "stem" (normalised embeddings), "block{i}", "encoded" (= the
    last block, BERT has no final norm), "pooled" and "pre_logits" (= features).
    """
    vocab_size: int
    variant: str | None = None
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    context_length: int = 512
    type_vocab_size: int = 2
    pad_id: int = 0
    act: str = "gelu"
    layer_norm_eps: float = 1e-12
    proj_dim: int | None = None
    dtype_mm: str = "float32"

    @nn.nowrap
    def sizes(self) -> dict:
        """width, depth, mlp_dim, num_heads after applying the variant."""
        return vit.resolve_size(self, self.variant, with_patch=False)

    @nn.compact
    def __call__(self, tokens, mask=None):
        sizes = text.check_inputs(self, tokens)
        width = sizes["width"]
        mask = tokens != self.pad_id if mask is None else mask.astype(bool)
        out = {}

        x = nn.Embed(self.vocab_size, width, name="token_embedding",
                     embedding_init=blocks.partitioned(nn.initializers.normal(0.02), "vocab",
                                                    "embed"))(tokens)
        posemb = self.param("pos_embedding", blocks.partitioned(nn.initializers.normal(0.02), None,
                                                             None, "embed"),
                            (1, self.context_length, width))
        type_embedding = self.param("type_embedding", blocks.partitioned(
            nn.initializers.normal(0.02), None, "embed"), (self.type_vocab_size, width))
        x = x + posemb[:, :tokens.shape[1]] + type_embedding[0]
        x = out["stem"] = blocks.layer_norm(self.layer_norm_eps, "embedding_norm")(x)

        for i in range(sizes["depth"]):
            x = out[f"block{i}"] = PostNormBlock(
                sizes["num_heads"], sizes["mlp_dim"], self.act, self.layer_norm_eps,
                self.dtype_mm, name=f"encoderblock_{i}")(x, mask)
        out["encoded"] = x

        weights = mask.astype(jnp.float32)[:, :, None]
        x = out["pooled"] = (jnp.sum(x.astype(jnp.float32) * weights, axis=1)
                             / jnp.maximum(jnp.sum(weights, axis=1), 1e-9))
        if self.proj_dim:
            x = blocks.dense(self.proj_dim, ("embed", "joint"), self.dtype_mm, "proj",
                          use_bias=False, kernel_init=nn.initializers.normal(width**-0.5))(x)
        features = out["pre_logits"] = x.astype(jnp.float32)
        return features, out
