"""Hugging Face checkpoints (config.json + model.safetensors, PyTorch layout) <-> our params.

Needs no torch: tensors are read and written with safetensors' numpy API. Each format has one
pair of functions, PyTorch layout -> ours and back; the exporter also yields the key set and
shapes a checkpoint must have, so loading reports every missing, unexpected or mis-shaped key.
"""
import json
import math
import os
import re

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath

from wlsft_jax.convert.keys import abstract_params, check_keys
from wlsft_jax.models import overview, two_towers, vit, vit_params

HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh"}
OUR_TO_HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu",
                         "gelu_tanh": "gelu_pytorch_tanh"}
# transformers' defaults, for fields a config.json leaves out (older versions saved only diffs).
CLIP_DEFAULTS = dict(projection_dim=512)
CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                          num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                          hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)
VIT_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                    image_size=224, patch_size=16, num_channels=3, qkv_bias=True)
# HF's legacy CLIP configs use eos_token_id == 2 to mean "pool at the argmax of the ids".
HF_ARGMAX_EOS_ID = 2

# Our block param -> HF module name, for CLIP's encoder layers and ViTModel's.
CLIP_BLOCK = dict(ln1="layer_norm1", query="self_attn.q_proj", key="self_attn.k_proj",
                  value="self_attn.v_proj", out="self_attn.out_proj", ln2="layer_norm2",
                  fc1="mlp.fc1", fc2="mlp.fc2")
VIT_BLOCK = dict(ln1="layernorm_before", query="attention.attention.query",
                 key="attention.attention.key", value="attention.attention.value",
                 out="attention.output.dense", ln2="layernorm_after", fc1="intermediate.dense",
                 fc2="output.dense")
QKV = ("query", "key", "value")
# Stored in some checkpoints but not part of the models: buffers, ViTModel's unused pooler and
# masked-image-modelling token.
CLIP_IGNORED = re.compile(r".*\.position_ids$")
VIT_IGNORED = re.compile(r"^pooler\.|^embeddings\.mask_token$")


def norm_from_torch(state, name):
    return {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}


def norm_to_torch(params, name):
    return {f"{name}.weight": params["scale"], f"{name}.bias": params["bias"]}


def linear_from_torch(state, name, bias=True):
    params = {"kernel": state[f"{name}.weight"].T}
    return {**params, "bias": state[f"{name}.bias"]} if bias else params


def linear_to_torch(params, name):
    state = {f"{name}.weight": params["kernel"].T}
    return {**state, f"{name}.bias": params["bias"]} if "bias" in params else state


def block_from_torch(state, prefix, names, num_heads):
    """One encoder layer in PyTorch layout -> our EncoderBlock params."""
    key = lambda role: f"{prefix}.{names[role]}"
    width = state[f"{key('query')}.weight"].shape[1]
    heads_shape = (num_heads, width // num_heads)
    qkv_kernel = jnp.stack([state[f"{key(r)}.weight"].T for r in QKV], axis=1)
    qkv_bias = jnp.stack([state[f"{key(r)}.bias"] for r in QKV])
    out = linear_from_torch(state, key("out"))
    return {
        "ln1": norm_from_torch(state, key("ln1")),
        "attn": {"qkv": {"kernel": qkv_kernel.reshape(width, 3, *heads_shape),
                         "bias": qkv_bias.reshape(3, *heads_shape)},
                 "out": {"kernel": out["kernel"].reshape(*heads_shape, width),
                         "bias": out["bias"]}},
        "ln2": norm_from_torch(state, key("ln2")),
        "mlp": {"fc1": linear_from_torch(state, key("fc1")),
                "fc2": linear_from_torch(state, key("fc2"))},
    }


def block_to_torch(params, prefix, names):
    """Our EncoderBlock params -> one encoder layer in PyTorch layout."""
    key = lambda role: f"{prefix}.{names[role]}"
    width = params["attn"]["out"]["bias"].shape[0]
    qkv_kernel = params["attn"]["qkv"]["kernel"].reshape(width, 3, width)
    qkv_bias = params["attn"]["qkv"]["bias"].reshape(3, width)
    state = {}
    for i, role in enumerate(QKV):
        state.update(linear_to_torch({"kernel": qkv_kernel[:, i], "bias": qkv_bias[i]}, key(role)))
    out = params["attn"]["out"]
    state.update(linear_to_torch({"kernel": out["kernel"].reshape(width, width),
                                  "bias": out["bias"]}, key("out")))
    state.update(norm_to_torch(params["ln1"], key("ln1")))
    state.update(norm_to_torch(params["ln2"], key("ln2")))
    state.update(linear_to_torch(params["mlp"]["fc1"], key("fc1")))
    state.update(linear_to_torch(params["mlp"]["fc2"], key("fc2")))
    return state


def split_cls_posemb(cls, posemb_with_cls):
    """HF's class token and its position-embedding row fold into our `cls` (no cls posemb)."""
    return cls.reshape(1, 1, -1) + posemb_with_cls[:, :1], posemb_with_cls[:, 1:]


def join_cls_posemb(cls, posemb):
    """Our `cls` and patch position embedding -> HF's class token and a table with a zero row."""
    return cls, jnp.concatenate([jnp.zeros_like(posemb[:, :1]), posemb], axis=1)


def clip_from_torch(state, model: two_towers.Model) -> dict:
    """HF CLIPModel state dict -> our two-tower params."""
    image_tower, text_tower = model.towers()
    vision, text = "vision_model", "text_model"
    cls, posemb = split_cls_posemb(
        state[f"{vision}.embeddings.class_embedding"],
        state[f"{vision}.embeddings.position_embedding.weight"][None])
    img = {
        "embedding": {"kernel": state[f"{vision}.embeddings.patch_embedding.weight"].transpose(
            2, 3, 1, 0)},
        "cls": cls, "pos_embedding": posemb,
        "ln_pre": norm_from_torch(state, f"{vision}.pre_layrnorm"),
        "encoder_norm": norm_from_torch(state, f"{vision}.post_layernorm"),
        "proj": linear_from_torch(state, "visual_projection", bias=False),
    }
    txt = {
        "token_embedding": {"embedding": state[f"{text}.embeddings.token_embedding.weight"]},
        "pos_embedding": state[f"{text}.embeddings.position_embedding.weight"][None],
        "encoder_norm": norm_from_torch(state, f"{text}.final_layer_norm"),
        "proj": linear_from_torch(state, "text_projection", bias=False),
    }
    for params, tower, prefix in ((img, image_tower, vision), (txt, text_tower, text)):
        sizes = tower.sizes()
        for i in range(sizes["depth"]):
            params[f"encoderblock_{i}"] = block_from_torch(
                state, f"{prefix}.encoder.layers.{i}", CLIP_BLOCK, sizes["num_heads"])
    return {"img": img, "txt": txt, "logit_scale": state["logit_scale"]}


def clip_to_torch(params) -> dict:
    """Our two-tower params -> HF CLIPModel state dict."""
    vision, text = "vision_model", "text_model"
    img, txt = params["img"], params["txt"]
    cls, posemb = join_cls_posemb(img["cls"], img["pos_embedding"])
    state = {
        f"{vision}.embeddings.patch_embedding.weight": img["embedding"]["kernel"].transpose(
            3, 2, 0, 1),
        f"{vision}.embeddings.class_embedding": cls.reshape(-1),
        f"{vision}.embeddings.position_embedding.weight": posemb[0],
        f"{text}.embeddings.token_embedding.weight": txt["token_embedding"]["embedding"],
        f"{text}.embeddings.position_embedding.weight": txt["pos_embedding"][0],
        "logit_scale": params["logit_scale"],
        **norm_to_torch(img["ln_pre"], f"{vision}.pre_layrnorm"),
        **norm_to_torch(img["encoder_norm"], f"{vision}.post_layernorm"),
        **norm_to_torch(txt["encoder_norm"], f"{text}.final_layer_norm"),
        **linear_to_torch(img["proj"], "visual_projection"),
        **linear_to_torch(txt["proj"], "text_projection"),
    }
    for tower, prefix in ((img, vision), (txt, text)):
        for name in tower:
            if name.startswith("encoderblock_"):
                layer = name.removeprefix("encoderblock_")
                state.update(block_to_torch(tower[name], f"{prefix}.encoder.layers.{layer}",
                                            CLIP_BLOCK))
    return state


def vit_from_torch(state, model: vit.Model) -> dict:
    """HF ViTModel state dict -> our ViT params."""
    sizes = model.sizes()
    cls, posemb = split_cls_posemb(state["embeddings.cls_token"],
                                   state["embeddings.position_embeddings"])
    params = {
        "embedding": {"kernel": state["embeddings.patch_embeddings.projection.weight"].transpose(
            2, 3, 1, 0), "bias": state["embeddings.patch_embeddings.projection.bias"]},
        "cls": cls, "pos_embedding": posemb,
        "encoder_norm": norm_from_torch(state, "layernorm"),
    }
    for i in range(sizes["depth"]):
        params[f"encoderblock_{i}"] = block_from_torch(state, f"encoder.layer.{i}", VIT_BLOCK,
                                                       sizes["num_heads"])
    return params


def vit_to_torch(params) -> dict:
    """Our ViT params -> HF ViTModel state dict (without the pooler)."""
    cls, posemb = join_cls_posemb(params["cls"], params["pos_embedding"])
    state = {
        "embeddings.patch_embeddings.projection.weight":
            params["embedding"]["kernel"].transpose(3, 2, 0, 1),
        "embeddings.patch_embeddings.projection.bias": params["embedding"]["bias"],
        "embeddings.cls_token": cls,
        "embeddings.position_embeddings": posemb,
        **norm_to_torch(params["encoder_norm"], "layernorm"),
    }
    for name in params:
        if name.startswith("encoderblock_"):
            layer = name.removeprefix("encoderblock_")
            state.update(block_to_torch(params[name], f"encoder.layer.{layer}", VIT_BLOCK))
    return state


def load_checkpoint(path, model, inputs, from_torch, to_torch, ignored: re.Pattern):
    """Reads `path`/model.safetensors, validates it against `model`, converts to our params."""
    file = epath.Path(path) / "model.safetensors"
    if not file.exists():
        raise ValueError(f"{path} has no model.safetensors; only safetensors checkpoints are read "
                         "(pickled pytorch_model.bin is never unpickled). Re-save the model with "
                         "`save_pretrained(dir, safe_serialization=True)`.")
    # Local files are memory-mapped; remote ones (gs://) are read whole.
    state = (safetensors.numpy.load_file(file) if "://" not in os.fspath(file)
             else safetensors.numpy.load(file.read_bytes()))
    skipped = sorted(k for k in state if ignored.match(k))
    if skipped:
        logging.info("Ignoring %d checkpoint entries not used by the model: %s", len(skipped),
                     skipped)
    state = {k: v for k, v in state.items() if k not in skipped}
    expected = jax.eval_shape(to_torch, abstract_params(model, *inputs))
    check_keys({k: v.shape for k, v in expected.items()}, {k: v.shape for k, v in state.items()},
               source=file)
    return jax.tree.map(jnp.asarray, from_torch(state, model))


def read_config(path, model_types: tuple[str, ...], defaults: dict) -> dict:
    """`path`/config.json over transformers' `defaults`; ValueError for another model type."""
    config = json.loads((epath.Path(path) / "config.json").read_text())
    if config.get("model_type") not in model_types:
        raise ValueError(f"{path} holds a {config.get('model_type')!r} model; this loader reads "
                         f"model_type in {list(model_types)}.")
    return {**defaults, **config}


def our_activation(hf_act: str) -> str:
    if hf_act not in HF_ACTIVATIONS:
        raise ValueError(f"Unsupported hidden_act {hf_act!r}; supported: {sorted(HF_ACTIVATIONS)}.")
    return HF_ACTIVATIONS[hf_act]


def square_size(config: dict, field: str) -> int:
    value = config[field]
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"Only square {field} is supported, got {value}.")
        value = value[0]
    return int(value)


def hf_vit_sizes(config: dict) -> dict:
    """Our ViT size fields from an HF vision config."""
    return dict(variant=None, width=config["hidden_size"], depth=config["num_hidden_layers"],
                mlp_dim=config["intermediate_size"], num_heads=config["num_attention_heads"],
                patch_size=square_size(config, "patch_size"),
                image_size=square_size(config, "image_size"),
                channels=config["num_channels"], act=our_activation(config["hidden_act"]),
                layer_norm_eps=config["layer_norm_eps"])


def from_hf_clip(path: str, *, image_size: int | None = None, patch_size: int | None = None,
                 dtype_mm: str = "float32") -> tuple[two_towers.Model, dict]:
    """Loads a HF `CLIPModel` directory (config.json + model.safetensors) as our two towers.

    `image_size` / `patch_size` other than the checkpoint's resample the position embedding and
    the patch kernel (logged). Returns `(model, params)` with plain-array params.
    """
    config = read_config(path, ("clip",), CLIP_DEFAULTS)
    vision_config = {**CLIP_VISION_DEFAULTS, **config.get("vision_config", {})}
    text_config = {**CLIP_TEXT_DEFAULTS, **config.get("text_config", {})}
    image = dict(hf_vit_sizes(vision_config), patch_bias=False, ln_pre=True, dtype_mm=dtype_mm)
    eos_id = text_config["eos_token_id"]
    text = dict(variant=None, vocab_size=text_config["vocab_size"],
                width=text_config["hidden_size"], depth=text_config["num_hidden_layers"],
                mlp_dim=text_config["intermediate_size"],
                num_heads=text_config["num_attention_heads"],
                context_length=text_config["max_position_embeddings"],
                eot_id=None if eos_id in (None, HF_ARGMAX_EOS_ID) else eos_id,
                act=our_activation(text_config["hidden_act"]),
                layer_norm_eps=text_config["layer_norm_eps"], dtype_mm=dtype_mm)
    model = two_towers.Model(image=image, text=text, out_dim=config["projection_dim"])
    inputs = (jnp.zeros((1, image["image_size"], image["image_size"], image["channels"])),
              jnp.zeros((1, text["context_length"]), jnp.int32))
    params = load_checkpoint(path, model, inputs, clip_from_torch, clip_to_torch, CLIP_IGNORED)
    image, params["img"] = vit_params.with_resolution(image, params["img"],
                                                      image_size=image_size, patch_size=patch_size)
    model = model.clone(image=image)
    overview.log_param_counts(params, name=f"CLIP from {path}")
    return model, params


def from_hf_vit(path: str, *, image_size: int | None = None, patch_size: int | None = None,
                pool: str = "cls", dtype_mm: str = "float32") -> tuple[vit.Model, dict]:
    """Loads a HF `ViTModel` directory (e.g. facebook/dino-vitb16) as our ViT.

    `features` is the final-norm class token (pool="cls"); the HF pooler is not used.
    """
    config = read_config(path, ("vit",), VIT_DEFAULTS)
    if not config["qkv_bias"]:
        raise ValueError("ViT checkpoints without qkv biases are not supported; need "
                         "qkv_bias=True.")
    image = dict(hf_vit_sizes(config), pool=pool, dtype_mm=dtype_mm)
    model = vit.Model(**image)
    inputs = (jnp.zeros((1, image["image_size"], image["image_size"], image["channels"])),)
    params = load_checkpoint(path, model, inputs, vit_from_torch, vit_to_torch, VIT_IGNORED)
    image, params = vit_params.with_resolution(image, params, image_size=image_size,
                                               patch_size=patch_size)
    overview.log_param_counts({"img": params}, name=f"ViT from {path}")
    return vit.Model(**image), params


def hf_clip_config(model: two_towers.Model, params: dict) -> dict:
    """HF CLIPConfig dict for our two towers; ValueError listing what HF cannot express."""
    image_tower, text_tower = model.towers()
    required = {
        "image_model == 'vit'": model.image_model == "vit",
        "text_model == 'text'": model.text_model == "text",
        "out_dim set": bool(model.out_dim),
    }
    if required["image_model == 'vit'"]:
        required.update({
            "image ln_pre=True": image_tower.ln_pre,
            "image patch_bias=False": not image_tower.patch_bias,
            "image class_token=True": image_tower.class_token,
            "image pool='cls'": image_tower.pool == "cls",
            "image num_classes unset": not image_tower.num_classes,
            f"image act in {sorted(OUR_TO_HF_ACTIVATIONS)}":
                image_tower.act in OUR_TO_HF_ACTIVATIONS,
        })
    if required["text_model == 'text'"]:
        required.update({
            f"text act in {sorted(OUR_TO_HF_ACTIVATIONS)}": text_tower.act in OUR_TO_HF_ACTIVATIONS,
            f"text eot_id != {HF_ARGMAX_EOS_ID}": text_tower.eot_id != HF_ARGMAX_EOS_ID,
        })
    unmet = [name for name, ok in required.items() if not ok]
    if unmet:
        raise ValueError(f"This model cannot be exported as a HF CLIPModel; it needs: {unmet}.")

    def sizes(tower):
        s = tower.sizes()
        return dict(hidden_size=s["width"], num_hidden_layers=s["depth"],
                    intermediate_size=s["mlp_dim"], num_attention_heads=s["num_heads"],
                    hidden_act=OUR_TO_HF_ACTIVATIONS[tower.act],
                    layer_norm_eps=tower.layer_norm_eps, projection_dim=model.out_dim)

    patch_size = image_tower.sizes()["patch_size"]
    grid_side = math.isqrt(params["img"]["pos_embedding"].shape[1])
    vision_config = dict(sizes(image_tower), model_type="clip_vision_model",
                         image_size=grid_side * patch_size, patch_size=patch_size,
                         num_channels=image_tower.channels)
    eot_id = HF_ARGMAX_EOS_ID if text_tower.eot_id is None else text_tower.eot_id
    text_config = dict(sizes(text_tower), model_type="clip_text_model",
                       vocab_size=text_tower.vocab_size,
                       max_position_embeddings=text_tower.context_length,
                       eos_token_id=eot_id, bos_token_id=None, pad_token_id=None)
    return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=model.out_dim,
                logit_scale_init_value=float(params["logit_scale"]), text_config=text_config,
                vision_config=vision_config)


def to_hf_clip(model: two_towers.Model, params: dict, out_dir: str) -> None:
    """Writes config.json + model.safetensors for `transformers.CLIPModel.from_pretrained`."""
    params = nn.unbox(params)
    config = hf_clip_config(model, params)
    state = {k: np.array(v, np.float32, order="C") for k, v in clip_to_torch(params).items()}
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "model.safetensors").write_bytes(
        safetensors.numpy.save(state, metadata={"format": "pt"}))
    logging.info("Wrote HF CLIPModel to %s (%d tensors).", out_dir, len(state))
