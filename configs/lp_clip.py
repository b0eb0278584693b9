r"""LP: linear probe — the encoder is frozen, only the head trains (regex schedule: None freezes).

  python -m wlsft_jax.main --config=configs/lp_clip.py              # embedded world

The head starts from the zero-shot classifier. Expected on the embedded world: see README.md.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    arg = recipes.parse_arg(arg, ("world", "imagenet"))
    lp = recipes.lp_stage()
    if arg == "imagenet":
        lp.batch_size = 512
        return recipes.imagenet_clip(stages=("lp",), lp=lp)
    return recipes.base(stages=("pretrain", "lp"), pretrain=recipes.pretrain_stage(), lp=lp)
