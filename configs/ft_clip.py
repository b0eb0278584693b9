r"""FT: end-to-end fine-tuning of the image tower with a zero-shot-initialised head (WiSE-FT).

  python -m wlsft_jax.main --config=configs/ft_clip.py              # embedded world
  python -m wlsft_jax.main --config=configs/ft_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16 --config.data.data_dir=/path/to/datasets
  # also :cifar10_stl, :domainnet, :iwildcam, :fmow, :living17, :entity30; see
  # configs/flyp_clip.py for what the paths hold and how WILDS is reported

The head starts as the zero-shot classifier (normalised template embeddings x temperature);
image features are L2-normalised; loss is cross-entropy; the text tower is unused.
Expected on the embedded world (the stage of recipes.WORLD_CLIP_TUNED, lr and steps chosen on
photo's validation split; this is configs/compare_clip.py's seed 0): FT 85.3 % ID (photo) /
48.1 % average OOD, WiSE-FT alpha 0.5 79.0 / 60.0, zero-shot 64.0 / 62.1; 3 seeds in README.
ImageNet (WiSE-FT, ViT-B/16; OOD = average over V2, R, A, Sketch, ObjectNet): FT 81.3 ID /
53.8 OOD, WiSE-FT alpha=0.5 81.7 / 63.0, zero-shot 68.3 / 58.1. Over LP-FT's 10 shifts
(Living-17, Entity-30, DomainNet, CIFAR -> STL, FMoW, ImageNet's, ...), its abstract reports FT
2 points above LP ID and 7 below it OOD on average; per-dataset numbers: see the LP-FT paper's
tables.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world", *recipes.REAL_TASKS))
    if args.data != "world":
        config = recipes.real_clip(args.data, stages=("ft",), ft=recipes.real_stage(
            "ft", args.data, optim=dict(lr=3e-5, grad_clip_norm=1.0)))
    else:
        config = recipes.from_world_clip(stages=("ft",), ft=recipes.world_clip_stage("ft"))
    return recipes.with_evals(config, args.evals)
