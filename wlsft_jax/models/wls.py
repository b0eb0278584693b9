"""Weak language supervision model: a vision encoder (+ adapters) projected into the embedding
space of a text encoder (e.g. a frozen all-MiniLM-L6-v2), trained with the CLIP loss.

Params: `img` (the ViT, its adapters and `img/proj`, the projection into the text space), `txt`
(the text encoder, unprojected: its own embedding space is the target) and `logit_scale`. Same
call as the two-tower CLIP, so the contrastive loss and the zero-shot tools apply unchanged.
"""
import flax.linen as nn

from wlsft_jax.models import two_towers, vit


class Model(two_towers.Model):
    """`apply({"params": p}, images, tokens) -> (zimg, ztxt, out)`, as `two_towers.Model`.

    `image`: `vit.Model` fields (an `adapter` dict included; `proj_dim` is set to the text
    encoder's width). `text`: fields of `wlsft_jax.models.<text_model>.Model`, without proj_dim.
    Only the towers differ from the CLIP: the text encoder is not projected, its space is the
    target. (`out_dim` is unused.)
    """
    text_model: str = "bert"

    @nn.nowrap
    def towers(self) -> tuple[nn.Module, nn.Module]:
        for tower, config in (("image", self.image), ("text", self.text)):
            if "proj_dim" in config:
                raise ValueError(f"WLS sets the projection itself; remove proj_dim from {tower} "
                                 "(the image tower projects to the text encoder's width).")
        text_tower = two_towers.tower_class(self.text_model)(**self.text)
        image_tower = vit.Model(**self.image, proj_dim=text_tower.sizes()["width"])
        return image_tower, text_tower
