r"""LP: linear probe as LP-FT fits it — L2-regularised logistic regression on frozen features.

  python -m wlsft_jax.main --config=configs/lp_clip.py              # embedded world
  python -m wlsft_jax.main --config=configs/lp_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16 --config.data.data_dir=/path/to/datasets
  # also :cifar10_stl, :domainnet, :iwildcam, :fmow, :living17, :entity30; see
  # configs/flyp_clip.py for what the paths hold and how WILDS is reported

The head is fitted by L-BFGS (methods/lp.py) on the L2-normalised image features of the ID
training images, its strength C chosen from lp.cs on the ID validation split; no training loop.
Alpha 0 of the WiSE-FT sweep is the zero-shot head. Expected on the embedded world (1.7 min on
the 2-core CPU, most of it the alpha sweep; C = 4.6, at 78.3 % validation top-1): LP 77.4 % ID
(photo) / 64.9 % average OOD, zero-shot 64.0 / 62.1 (configs/compare_clip.py's LP, the same for
every seed). Real tasks: LP-FT's abstract reports LP 7 points above FT OOD (2 below ID) on
average over its 10 shifts; per-dataset numbers: see the LP-FT paper's tables.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world", *recipes.REAL_TASKS))
    if args.data != "world":
        config = recipes.real_clip(args.data, stages=("lp",), lp=recipes.lp_stage())
    else:
        config = recipes.from_world_clip(stages=("lp",), lp=recipes.world_clip_stage("lp"))
    return recipes.with_evals(config, args.evals)
