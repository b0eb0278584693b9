r"""FLYP: fine-tune like you pretrain (Goyal et al., CVPR 2023).

Each ID image is paired with its class name in a template sampled per example per step; both
towers train with the CLIP contrastive loss; evaluation rebuilds the zero-shot head from the tuned
text tower.

  python -m wlsft_jax.main --config=configs/flyp_clip.py            # embedded world
  python -m wlsft_jax.main --config=configs/flyp_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16             # declared; needs issue 7

Expected on the embedded world (2-core CPU, about 8 minutes): see the table in README.md.
ImageNet (FLYP paper, CLIP ViT-B/16): about 82.6 ID / 60.2 average OOD over
V2, R, A, Sketch, ObjectNet.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    arg = recipes.parse_arg(arg, ("world", "imagenet"))
    if arg == "imagenet":
        return recipes.imagenet_clip(
            stages=("flyp",),
            flyp=recipes.stage("flyp", steps=25_020, batch_size=512, templates="openai_imagenet",
                               optim=dict(lr=1e-5, wd=0.1, warmup_steps=500)))
    return recipes.base(
        stages=("pretrain", "flyp"),
        pretrain=recipes.pretrain_stage(),
        flyp=recipes.stage("flyp", steps=250, templates="simple",
                           optim=dict(lr=1e-4, wd=0.1, warmup_steps=25)))
