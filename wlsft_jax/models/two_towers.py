"""CLIP-style two-tower model: an image tower `img` and a text tower `txt` in a joint space."""
from collections.abc import Mapping
import importlib
import math

import flax.linen as nn
import jax.numpy as jnp

MAX_TEMPERATURE = 100.0


def tower_class(name: str) -> type[nn.Module]:
    """The `Model` class of `wlsft_jax.models.<name>`."""
    return importlib.import_module(f"wlsft_jax.models.{name}").Model


def l2_normalize(x, eps: float = 1e-8):
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class Model(nn.Module):
    """`apply({"params": p}, images, tokens) -> (zimg, ztxt, out)`.

    zimg / ztxt are L2-normalised tower features (None for a None input). Both towers get
    `proj_dim=out_dim` (None: no projection, the widths must then match). `out` holds the towers'
    outputs as "img/<key>" and "txt/<key>" and "temperature" = min(exp(logit_scale), 100).
    """
    image_model: str = "vit"
    text_model: str = "text"
    image: Mapping | None = None
    text: Mapping | None = None
    out_dim: int | None = 128
    temperature_init: float = 1 / 0.07

    @nn.nowrap
    def tower_config(self, config: Mapping | None, tower: str) -> dict:
        config = dict(config or {})
        if "proj_dim" in config:
            raise ValueError(f"Set the joint dimension with out_dim, not {tower}.proj_dim; valid "
                             f"{tower} keys are the fields of the {tower} model except proj_dim.")
        return dict(config, proj_dim=self.out_dim)

    @nn.nowrap
    def towers(self) -> tuple[nn.Module, nn.Module]:
        """The image and text tower modules this model is made of."""
        return (tower_class(self.image_model)(**self.tower_config(self.image, "image")),
                tower_class(self.text_model)(**self.tower_config(self.text, "text")))

    def setup(self):
        self.img, self.txt = self.towers()
        self.logit_scale = self.param(
            "logit_scale", nn.with_logical_partitioning(nn.initializers.constant(
                math.log(self.temperature_init)), ()), ())

    def __call__(self, images, tokens):
        out = {}
        zimg = ztxt = None
        if images is not None:
            features, image_out = self.img(images)
            zimg = l2_normalize(features)
            out.update({f"img/{k}": v for k, v in image_out.items()})
        if tokens is not None:
            features, text_out = self.txt(tokens)
            ztxt = l2_normalize(features)
            out.update({f"txt/{k}": v for k, v in text_out.items()})
        if zimg is not None and ztxt is not None and zimg.shape[-1] != ztxt.shape[-1]:
            raise ValueError(f"Image features have {zimg.shape[-1]} dims but text features "
                             f"{ztxt.shape[-1]}; set out_dim to project both to one size.")
        out["temperature"] = jnp.minimum(jnp.exp(self.logit_scale), MAX_TEMPERATURE)
        return zimg, ztxt, out
