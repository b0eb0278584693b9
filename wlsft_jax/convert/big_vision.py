"""big_vision ViT checkpoints (.npz, "/"-joined names as in big_vision/models/vit.py) <-> ours.

Also reads the older layouts big_vision itself loads: position embedding under
`Transformer/posembed_input/` or `Transformer/`, with a class-token row (folded into `cls`), and
scanned blocks stored as one `Transformer/encoderblock/` with a leading depth axis.
"""
import math
import re

from absl import logging
from etils import epath
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wlsft_jax.convert.keys import abstract_params, check_keys
from wlsft_jax.models import overview, vit, vit_params

# Our flat param path -> big_vision's, applied in order.
RENAMES = (
    (r"^encoderblock_(\d+)/", r"Transformer/encoderblock_\1/"),
    (r"^encoder_norm/", "Transformer/encoder_norm/"),
    (r"^map_head/ln/", "MAPHead_0/LayerNorm_0/"),
    (r"^map_head/", "MAPHead_0/"),
    (r"/attn/", "/MultiHeadDotProductAttention_0/"),
    (r"/ln1/", "/LayerNorm_0/"),
    (r"/ln2/", "/LayerNorm_1/"),
    (r"/mlp/fc1/", "/MlpBlock_0/Dense_0/"),
    (r"/mlp/fc2/", "/MlpBlock_0/Dense_1/"),
)
QKV = ("query", "key", "value")
UNSUPPORTED = ("ln_pre", "proj")  # CLIP-tower parts with no big_vision ViT counterpart.


def big_vision_names(path: str) -> list[str]:
    """big_vision name(s) of one of our flat param paths; fused qkv maps to query, key, value."""
    for pattern, replacement in RENAMES:
        path = re.sub(pattern, replacement, path)
    if "/qkv/" in path:
        return [path.replace("/qkv/", f"/{role}/") for role in QKV]
    return [path]


def to_big_vision(params: dict) -> dict:
    """Our ViT params -> flat big_vision dict."""
    flat = traverse_util.flatten_dict(params, sep="/")
    unsupported = sorted({p.split("/")[0] for p in flat} & set(UNSUPPORTED))
    if unsupported:
        raise ValueError(f"big_vision's ViT has no {unsupported}; export a tower without them "
                         "(ln_pre=False, proj_dim=None).")
    state = {}
    for path, value in flat.items():
        names = big_vision_names(path)
        if len(names) == 1:
            state[names[0]] = value
        else:  # qkv kernel [D, 3, H, K] splits on axis 1, qkv bias [3, H, K] on axis 0.
            axis = 1 if path.endswith("kernel") else 0
            state.update({n: v.squeeze(axis) for n, v in
                          zip(names, jnp.split(value, 3, axis=axis))})
    return state


def from_big_vision_state(state: dict, abstract: dict) -> dict:
    """Flat big_vision dict -> our ViT params shaped like `abstract`."""
    flat = {}
    for path in traverse_util.flatten_dict(abstract, sep="/"):
        names = big_vision_names(path)
        if len(names) == 1:
            flat[path] = state[names[0]]
        else:
            flat[path] = np.stack([state[n] for n in names], axis=1 if path.endswith("kernel")
                                  else 0)
    return traverse_util.unflatten_dict(flat, sep="/")


def modernize(state: dict) -> dict:
    """Rewrites older big_vision / vision_transformer layouts into the current naming."""
    state = dict(state)
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in state:
            logging.info("big_vision: moving %s to pos_embedding.", old)
            state["pos_embedding"] = state.pop(old)
    posemb = state.get("pos_embedding")
    if posemb is not None and "cls" in state:
        side = math.isqrt(posemb.shape[1] - 1)
        if side * side + 1 == posemb.shape[1]:
            logging.info("big_vision: folding the class-token position embedding into cls.")
            state["cls"] = state["cls"] + posemb[:, :1]
            state["pos_embedding"] = posemb[:, 1:]
    scanned = [k for k in state if k.startswith("Transformer/encoderblock/")]
    for key in scanned:
        stacked = state.pop(key)
        rest = key.removeprefix("Transformer/encoderblock/")
        for i, layer in enumerate(stacked):
            state[f"Transformer/encoderblock_{i}/{rest}"] = layer
    return state


def infer_config(state: dict, *, keep_head: bool) -> dict:
    """Our ViT fields read off the checkpoint's shapes."""
    kernel = state["embedding/kernel"]
    patch, channels, width = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    depth = len({k.split("/")[1] for k in state if k.startswith("Transformer/encoderblock_")})
    block = "Transformer/encoderblock_0"
    side = math.isqrt(state["pos_embedding"].shape[1])
    if "MAPHead_0/probe" in state:
        pool = "map"
    else:
        pool = "cls" if "cls" in state else "mean"
    return dict(
        variant=None, width=width, depth=depth, patch_size=patch, channels=channels,
        num_heads=state[f"{block}/MultiHeadDotProductAttention_0/query/kernel"].shape[1],
        mlp_dim=state[f"{block}/MlpBlock_0/Dense_0/kernel"].shape[1],
        image_size=side * patch, patch_bias="embedding/bias" in state, class_token="cls" in state,
        pool=pool,
        num_classes=state["head/kernel"].shape[1] if keep_head and "head/kernel" in state else None)


def from_big_vision(path: str, *, image_size: int | None = None, patch_size: int | None = None,
                    keep_head: bool = True, act: str = "gelu_tanh", layer_norm_eps: float = 1e-6,
                    dtype_mm: str = "float32") -> tuple[vit.Model, dict]:
    """Loads a big_vision ViT `.npz` as `(vit.Model, params)`; sizes come from the shapes.

    `keep_head=False` drops `head/` and `pre_logits/` (for transfer with a new head).
    `act`/`layer_norm_eps` default to big_vision's (flax's tanh GELU, 1e-6). Another
    `image_size` / `patch_size` resamples the position embedding and patch kernel (logged).
    """
    with epath.Path(path).open("rb") as file, np.load(file, allow_pickle=False) as npz:
        state = modernize(dict(npz))
    if not keep_head:
        dropped = sorted(k for k in state if k.startswith(("head/", "pre_logits/")))
        logging.info("big_vision: dropping %s.", dropped)
        state = {k: v for k, v in state.items() if k not in dropped}
    if "embedding/kernel" not in state or "pos_embedding" not in state:
        raise ValueError(f"{path} is not a big_vision ViT checkpoint: it lacks "
                         f"{[k for k in ('embedding/kernel', 'pos_embedding') if k not in state]}; "
                         f"found keys {sorted(state)[:20]}...")
    config = dict(infer_config(state, keep_head=keep_head), act=act,
                  layer_norm_eps=layer_norm_eps, dtype_mm=dtype_mm)
    model = vit.Model(**config)
    size = config["image_size"]
    abstract = abstract_params(model, jnp.zeros((1, size, size, config["channels"])))
    expected = jax.eval_shape(to_big_vision, abstract)
    check_keys({k: v.shape for k, v in expected.items()}, {k: v.shape for k, v in state.items()},
               source=path)
    params = jax.tree.map(jnp.asarray, from_big_vision_state(state, abstract))
    config, params = vit_params.with_resolution(config, params, image_size=image_size,
                                                patch_size=patch_size)
    overview.log_param_counts({"img": params}, name=f"ViT from {path}")
    return vit.Model(**config), params


def to_big_vision_npz(params: dict, path: str) -> None:
    """Writes our ViT params as a big_vision `.npz` (current naming, no pickles)."""
    state = to_big_vision(nn.unbox(params))
    with epath.Path(path).open("wb") as file:
        np.savez(file, **{k: np.asarray(v) for k, v in state.items()})
    logging.info("Wrote big_vision checkpoint %s (%d arrays).", path, len(state))
