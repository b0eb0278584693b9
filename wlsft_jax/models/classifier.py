"""Image classifier for FT / LP / LP-FT: a ViT image tower, L2-normalised features, linear head.

Its params are `{"img": <the CLIP image tower's params>, "head": {"kernel", "bias"}}`, so a CLIP
checkpoint's image tower drops in unchanged and the zero-shot head (temperature x normalised class
embeddings) has exactly the head's form — which is what WiSE-FT interpolates against.
"""
import flax.linen as nn
import jax.numpy as jnp

from wlsft_jax.models import blocks, vit


class Model(nn.Module):
    """`apply({"params": p}, images) -> (logits, out)`; `out` is the image tower's `out`."""
    img: dict
    num_classes: int

    @nn.compact
    def __call__(self, images):
        features, out = vit.Model(**self.img, name="img")(images)
        features = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
        logits = blocks.dense(self.num_classes, ("joint", "classes"), "float32", "head")(features)
        return logits, out
