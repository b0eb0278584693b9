r"""LP: linear probe — the encoder is frozen, only the head trains (regex schedule: None freezes).

  python -m wlsft_jax.main --config=configs/lp_clip.py              # embedded world
  python -m wlsft_jax.main --config=configs/lp_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16 --config.data.data_dir=/path/to/datasets
  # also :cifar10_stl, :domainnet, :iwildcam, :fmow, :living17, :entity30; see
  # configs/flyp_clip.py for what the paths hold and how WILDS is reported

The head starts from the zero-shot classifier and trains at the task's batch size. Expected on
the embedded world (the stage of recipes.WORLD_CLIP_TUNED, lr chosen on photo's validation split;
configs/compare_clip.py's seed 0): LP 72.9 % ID (photo) / 71.0 % average OOD, zero-shot
64.0 / 62.1; 3 seeds in README. Real tasks: LP-FT's abstract reports LP 7 points above FT OOD
(2 below ID) on average over its 10 shifts; per-dataset numbers: see the LP-FT paper's tables.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world", *recipes.REAL_TASKS))
    if args.data != "world":
        config = recipes.real_clip(args.data, stages=("lp",), lp=recipes.lp_stage())
    else:
        config = recipes.from_world_clip(stages=("lp",), lp=recipes.world_clip_stage("lp"))
    return recipes.with_evals(config, args.evals)
