r"""FLYP: fine-tune like you pretrain (Goyal et al., CVPR 2023).

Each ID image is paired with its class name in a template sampled per example per step; both
towers train with the CLIP contrastive loss; evaluation rebuilds the zero-shot head from the tuned
text tower.

  python -m wlsft_jax.main --config=configs/flyp_clip.py            # embedded world
  python -m wlsft_jax.main --config=configs/flyp_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16 --config.data.data_dir=/path/to/datasets
  # also :cifar10_stl (CIFAR-10 -> STL-10), :domainnet (sketch -> real, painting, clipart),
  # :iwildcam and :fmow (WILDS ID -> OOD), :living17 and :entity30 (BREEDS source -> target)

init.path is a Hugging Face CLIP directory (config.json, model.safetensors, vocab.json,
merges.txt); data.data_dir (or $TFDS_DATA_DIR) holds the prepared datasets
(launch/prepare_data.md). Each task's batch size, steps and weight decay are in
recipes.REAL_TASKS; :iwildcam and :fmow follow FLYP's WILDS recipe (20 epochs, batch size 256,
lr 1e-5, weight decay 0.2). The report tabulates iWildCam by macro-F1 (ID and OOD) and FMoW by
top-1 ID and worst-region accuracy OOD; average OOD is over data.ood_domains exactly.

Expected on the embedded world, from the shipped world_clip (2-core CPU, 3.3 minutes; the
stage of recipes.WORLD_CLIP_TUNED, lr and steps chosen on photo's validation split, so this is
configs/compare_clip.py's seed 0): FLYP 85.5 % ID (photo) / 45.2 % average OOD, zero-shot
64.0 / 62.1, WiSE-FT alpha 0.5 79.9 / 57.1, best OOD at alpha 0.2: 75.3 / 65.9 (BENCHMARKS.md,
"Main job on the embedded default"; 3 seeds in README's claims table).
ImageNet (FLYP paper, CLIP ViT-B/16): about 82.6 ID / 60.2 average OOD over
V2, R, A, Sketch, ObjectNet. iWildCam: FLYP's abstract reports 2.3 points ID and 2.7 OOD above
the top of the WILDS leaderboard; for its iWildCam and FMoW numbers see the FLYP paper's results
tables. No paper number is quoted here for :cifar10_stl, :domainnet, :living17 / :entity30.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world", *recipes.REAL_TASKS))
    if args.data != "world":
        config = recipes.real_clip(
            args.data, stages=("flyp",), flyp=recipes.real_stage(
                "flyp", args.data, templates=recipes.REAL_TASKS[args.data]["templates"],
                optim=dict(lr=1e-5)))
    else:
        config = recipes.from_world_clip(stages=("flyp",), flyp=recipes.world_clip_stage("flyp"))
    return recipes.with_evals(config, args.evals)
