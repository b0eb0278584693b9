r"""DINO self-distillation of the tiny image tower on the embedded world's images (all domains,
no captions, no labels): `world_dino`, the world's stand-in for DINO ViT-B/16, shipped in the
package. Rebuild it with

  python -m wlsft_jax.main --config=configs/pretrain_dino.py --workdir=WORKDIR
  python -m wlsft_jax.model_cards export world_dino --workdir=WORKDIR     # prints its sha256

The image tower is mu/8 (ViT width 128, 4 blocks, patch 8, 32-px images); 2,500 steps of batch
256 (640,000 images, 6.4 passes over 100,000), AdamW lr 1e-3, 100 warm-up steps, cosine; DINO's
head (1,024 prototypes), teacher momentum 0.99 -> 1, 2 global + 4 local crops with colour jitter
(`methods.dino.Settings`, each a `--config.dino.settings.<name>=` override). Wall time: 70 min on
the 2-core CPU shared with test runs; 0.9 steps/s when it was alone, so about 46 min.

Weighted k-NN (k = 20, final-norm class token, DINO's protocol) of shape on every domain, with
the 20,000 photo training images as the bank, logged every `eval_every` steps (1,000 test
images per domain, chance 9.1 %):
  step     500   1000   1500   2000   2500
  photo   25.5   27.6   29.7   29.4   29.4       OOD domains stay at 8-13 %.
It falls short of the 40 % the issue asked for. Four variants on a lent H200 (2,500-step
schedule, stopped at step 1,750 by the lease; photo k-NN at steps 500 / 1,000 / 1,500): patch 4
(mu/4) 21.6 / 23.4 / 22.9; lr 2e-3 with 256 prototypes 28.4 / 27.2 / 29.6; gentler crops
(global 0.5-1, local 0.2-0.5) 26.2 / 27.9 / 27.3; teacher temperature 0.07 with momentum 0.996
24.3 / 24.7 / 26.9. What limits it: k-NN of each scene factor on the shipped tower's features
(5,000-image photo bank, 1,000 photo queries) reads background 100 %, colour 82 %, size 77 %,
count 67 %, shape 24 %, position 20 % (chance 19 / 15 / 52 / 49 / 11 / 17). Two crops of one
image share its background and object colour whatever the crop and colour jitter do, so
self-distillation matches views by those; shape is a small part of 32-px images.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world",))
    return recipes.with_evals(recipes.dino_base(stages=("dino",), dino=recipes.dino_stage(
        steps=2_500, eval_every=500, checkpoint_every=250)), args.evals)
