r"""DINO self-distillation of the tiny image tower on the embedded world's images (all domains,
no captions, no labels): `world_dino`, the world's stand-in for DINO ViT-B/16 (not shipped yet).

  python -m wlsft_jax.main --config=configs/pretrain_dino.py

Weighted k-NN (k = 20, final-norm class token, DINO's protocol) of shape on every domain, with
the photo training images as the bank, is logged every `eval_every` steps and reported at the
end. Export a finished run with `python -m wlsft_jax.model_cards export world_dino
--workdir=WORKDIR` once `world_dino` is registered in wlsft_jax.pretrained.MODELS.

Measured: on one H200 GPU (a 10,000-step schedule, four runs sharing the machine, data-bound),
k-NN photo top-1 was 27.8 % at step 500 and 29.9 % at step 1,000 (chance 9.1 %); the 2,500-step
recipe here has not been run to the end (on the 2-core CPU it runs at about 0.1-0.2 steps/s
while other jobs share it). OOD domains stay near chance against the photo bank.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    recipes.parse_arg(arg, ("world",))
    return recipes.dino_base(stages=("dino",), dino=recipes.dino_stage(
        steps=2_500, eval_every=500, checkpoint_every=250))
