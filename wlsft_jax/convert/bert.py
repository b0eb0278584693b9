"""Hugging Face `BertModel` checkpoints (config.json + model.safetensors) -> our BERT encoder.

Reads e.g. sentence-transformers/all-MiniLM-L6-v2 without torch. Blocks map through the same
fused-qkv conversion as the ViT's (`hf.block_from_torch`); the pooler is not used (sentences are
mean-pooled over the attention mask).
"""
import re

import jax.numpy as jnp

from wlsft_jax.convert import hf
from wlsft_jax.models import bert, overview

# transformers' BertConfig defaults, for fields a config.json leaves out.
BERT_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                     max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                     pad_token_id=0, position_embedding_type="absolute")
# Our block param -> HF module name in a BertLayer.
BERT_BLOCK = dict(ln1="attention.output.LayerNorm", query="attention.self.query",
                  key="attention.self.key", value="attention.self.value",
                  out="attention.output.dense", ln2="output.LayerNorm", fc1="intermediate.dense",
                  fc2="output.dense")
# Stored in BertModel checkpoints but not used: the position-id buffer and the CLS pooler.
BERT_IGNORED = re.compile(r".*\.position_ids$|^pooler\.")


def bert_from_torch(state, model: bert.Model) -> dict:
    """HF BertModel state dict -> our BERT params."""
    sizes = model.sizes()
    params = {
        "token_embedding": {"embedding": state["embeddings.word_embeddings.weight"]},
        "pos_embedding": state["embeddings.position_embeddings.weight"][None],
        "type_embedding": state["embeddings.token_type_embeddings.weight"],
        "embedding_norm": hf.norm_from_torch(state, "embeddings.LayerNorm"),
    }
    for i in range(sizes["depth"]):
        params[f"encoderblock_{i}"] = hf.block_from_torch(state, f"encoder.layer.{i}", BERT_BLOCK,
                                                          sizes["num_heads"])
    return params


def bert_to_torch(params) -> dict:
    """Our BERT params -> HF BertModel state dict (without the pooler)."""
    state = {
        "embeddings.word_embeddings.weight": params["token_embedding"]["embedding"],
        "embeddings.position_embeddings.weight": params["pos_embedding"][0],
        "embeddings.token_type_embeddings.weight": params["type_embedding"],
        **hf.norm_to_torch(params["embedding_norm"], "embeddings.LayerNorm"),
    }
    for name in params:
        if name.startswith("encoderblock_"):
            layer = name.removeprefix("encoderblock_")
            state.update(hf.block_to_torch(params[name], f"encoder.layer.{layer}", BERT_BLOCK))
    return state


def from_hf_bert(path: str, *, dtype_mm: str = "float32") -> tuple[bert.Model, dict]:
    """Loads a HF `BertModel` directory (e.g. all-MiniLM-L6-v2) as our mean-pooled encoder.

    Returns `(model, params)` with plain-array params; `model` pads with the config's
    pad_token_id and takes up to max_position_embeddings tokens.
    """
    config = hf.read_config(path, ("bert",), BERT_DEFAULTS)
    if config["position_embedding_type"] != "absolute":
        raise ValueError(f"{path}: position_embedding_type={config['position_embedding_type']!r} "
                         "is not supported; supported: ['absolute'].")
    model = bert.Model(vocab_size=config["vocab_size"], width=config["hidden_size"],
                       depth=config["num_hidden_layers"], mlp_dim=config["intermediate_size"],
                       num_heads=config["num_attention_heads"],
                       context_length=config["max_position_embeddings"],
                       type_vocab_size=config["type_vocab_size"],
                       pad_id=config["pad_token_id"] or 0,
                       act=hf.our_activation(config["hidden_act"]),
                       layer_norm_eps=config["layer_norm_eps"], dtype_mm=dtype_mm)
    inputs = (jnp.zeros((1, model.context_length), jnp.int32),)
    params = hf.load_checkpoint(path, model, inputs, bert_from_torch, bert_to_torch,
                                BERT_IGNORED)
    overview.log_param_counts({"txt": params}, name=f"BERT from {path}")
    return model, params
