r"""Contrastive pretraining of the tiny CLIP on the embedded world's captions (all domains).

  python -m wlsft_jax.main --config=configs/pretrain_clip.py

Expected (2-core CPU, measured): see BENCHMARKS.md; prints zero-shot accuracy per domain.
The pretrained model is what every other embedded config fine-tunes.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    recipes.parse_arg(arg, ("world",))
    return recipes.base(stages=("pretrain",), pretrain=recipes.pretrain_stage())
