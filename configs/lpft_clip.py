r"""LP-FT (Kumar et al., ICLR 2022): linear probe first, then fine-tune everything from it with a
smaller learning rate, so the head no longer distorts the features while it is still random.

  python -m wlsft_jax.main --config=configs/lpft_clip.py            # embedded world
  python -m wlsft_jax.main --config=configs/lpft_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16 --config.data.data_dir=/path/to/datasets
  # also :cifar10_stl and :domainnet; see configs/flyp_clip.py for what the paths hold

Expected on the embedded world: see README.md.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    arg = recipes.parse_arg(arg, ("world", *recipes.REAL_TASKS))
    if arg != "world":
        lp = recipes.lp_stage()
        lp.batch_size = 512
        return recipes.real_clip(arg, stages=("lp", "lpft"), lp=lp,
                                 lpft=recipes.real_stage("ft", arg, optim=dict(lr=1e-5, wd=0.1)))
    ft = recipes.stage("ft", steps=250, optim=dict(lr=3e-5, wd=0.1, warmup_steps=25))
    return recipes.base(stages=("pretrain", "lp", "lpft"), pretrain=recipes.pretrain_stage(),
                        lp=recipes.lp_stage(), lpft=ft)
