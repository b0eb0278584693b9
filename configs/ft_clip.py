r"""FT: end-to-end fine-tuning of the image tower with a zero-shot-initialised head (WiSE-FT).

  python -m wlsft_jax.main --config=configs/ft_clip.py              # embedded world
  python -m wlsft_jax.main --config=configs/ft_clip.py:imagenet \
      --config.init.path=/path/to/clip-vit-base-patch16             # declared; needs issue 7

The head starts as the zero-shot classifier (normalised template embeddings x temperature);
image features are L2-normalised; loss is cross-entropy; the text tower is unused.
Expected on the embedded world: see README.md. ImageNet (WiSE-FT, ViT-B/16): FT 81.3 ID /
53.8 OOD; zero-shot 68.3 / 58.1.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    arg = recipes.parse_arg(arg, ("world", "imagenet"))
    if arg == "imagenet":
        return recipes.imagenet_clip(
            stages=("ft",),
            ft=recipes.stage("ft", steps=25_020, batch_size=512,
                             optim=dict(lr=3e-5, wd=0.1, warmup_steps=500, grad_clip_norm=1.0)))
    return recipes.base(
        stages=("pretrain", "ft"),
        pretrain=recipes.pretrain_stage(),
        ft=recipes.stage("ft", steps=250, optim=dict(lr=1e-4, wd=0.1, warmup_steps=25)))
