r"""Contrastive pretraining of the tiny CLIP on the embedded world's captions (all domains).

  python -m wlsft_jax.main --config=configs/pretrain_clip.py        # 600 steps, a quick look
  python -m wlsft_jax.main --config=configs/pretrain_clip.py:long   # the shipped world_clip

`:long` is the recipe of the shipped `world_clip` (wlsft_jax.pretrained): the caption mix is
weighted toward photo (4 photo records for each one of the other domains), as CLIP's web data
holds far more photos than sketches or paintings, so its zero-shot accuracy is lower OOD than
ID. Zero-shot top-1 per domain is logged every `eval_every` steps. Export the finished run with
`python -m wlsft_jax.model_cards export world_clip --workdir=WORKDIR`.

Expected: see README.md's world_clip model card (zero-shot per domain, wall time).
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, length=("world", "long"))
    if args.length == "world":
        config = recipes.base(stages=("pretrain",), pretrain=recipes.pretrain_stage())
    else:
        config = recipes.base(stages=("pretrain",), pretrain=recipes.pretrain_stage(
            steps=2_000, batch_size=256, eval_every=500, checkpoint_every=250,
            optim=dict(lr=1e-3, wd=0.1, warmup_steps=200)))
        config.data.pretrain_domain_weights = (4, 1, 1, 1, 1)
    return recipes.with_evals(config, args.evals)
