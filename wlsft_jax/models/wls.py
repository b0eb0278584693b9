"""Weak language supervision model: a vision encoder (+ adapters) projected into the embedding
space of a text encoder (e.g. a frozen all-MiniLM-L6-v2), trained with the CLIP loss.

Params: `img` (the ViT, its adapters and `img/proj`, the projection into the text space), `txt`
(the text encoder, unprojected: its own embedding space is the target) and `logit_scale`. Same
call as the two-tower CLIP, so the contrastive loss and the zero-shot tools apply unchanged.
"""
from collections.abc import Mapping
import math

import flax.linen as nn
import jax.numpy as jnp

from wlsft_jax.models import two_towers, vit


class Model(nn.Module):
    """`apply({"params": p}, images, tokens) -> (zimg, ztxt, out)`, as `two_towers.Model`.

    `image`: `vit.Model` fields (an `adapter` dict included; `proj_dim` is set to the text
    encoder's width). `text`: fields of `wlsft_jax.models.<text_model>.Model`, without proj_dim.
    """
    image: Mapping
    text: Mapping
    text_model: str = "bert"
    temperature_init: float = 1 / 0.07

    @nn.nowrap
    def towers(self) -> tuple[nn.Module, nn.Module]:
        for tower, config in (("image", self.image), ("text", self.text)):
            if "proj_dim" in config:
                raise ValueError(f"WLS sets the projection itself; remove proj_dim from {tower} "
                                 "(the image tower projects to the text encoder's width).")
        text_tower = two_towers.tower_class(self.text_model)(**self.text)
        image_tower = vit.Model(**self.image, proj_dim=text_tower.sizes()["width"])
        return image_tower, text_tower

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
            zimg = two_towers.l2_normalize(features)
            out.update({f"img/{k}": v for k, v in image_out.items()})
        if tokens is not None:
            features, text_out = self.txt(tokens)
            ztxt = two_towers.l2_normalize(features)
            out.update({f"txt/{k}": v for k, v in text_out.items()})
        out["temperature"] = jnp.minimum(jnp.exp(self.logit_scale), two_towers.MAX_TEMPERATURE)
        return zimg, ztxt, out
