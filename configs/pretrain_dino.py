r"""DINO self-distillation of the tiny image tower on the embedded world's images (all domains,
no captions, no labels): the shipped `world_dino`, the world's stand-in for DINO ViT-B/16.

  python -m wlsft_jax.main --config=configs/pretrain_dino.py

Weighted k-NN (k = 20, final-norm class token, DINO's protocol) of shape on every domain, with
the photo training images as the bank, is logged every `eval_every` steps and reported at the
end. Export the finished run with `python -m wlsft_jax.pretrained export world_dino
--workdir=WORKDIR`.

Expected: see README.md's world_dino model card (k-NN per domain, wall time).
"""
from wlsft_jax import recipes


def get_config(arg=None):
    recipes.parse_arg(arg, ("world",))
    return recipes.dino_base(stages=("dino",), dino=recipes.dino_stage(
        steps=2_500, eval_every=500, checkpoint_every=250))
