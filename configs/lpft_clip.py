r"""LP-FT (Kumar et al., ICLR 2022): linear probe first, then fine-tune everything from it with a
smaller learning rate, so the head no longer distorts the features while it is still random.

  python -m wlsft_jax.main --config=configs/lpft_clip.py            # embedded world

Expected on the embedded world: see README.md.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    arg = recipes.parse_arg(arg, ("world", "imagenet"))
    ft = recipes.stage("ft", steps=250, optim=dict(lr=3e-5, wd=0.1, warmup_steps=25))
    if arg == "imagenet":
        lp = recipes.lp_stage()
        lp.batch_size = ft.batch_size = 512
        ft.steps = 25_020
        ft.optim.lr = 1e-5
        return recipes.imagenet_clip(stages=("lp", "lpft"), lp=lp, lpft=ft)
    return recipes.base(stages=("pretrain", "lp", "lpft"), pretrain=recipes.pretrain_stage(),
                        lp=recipes.lp_stage(), lpft=ft)
