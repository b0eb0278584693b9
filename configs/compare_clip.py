r"""Every method on one footing: pretrain once, then zero-shot, LP, FT, LP-FT and FLYP, each
swept over WiSE-FT's alphas, over 3 seeds; writes the full report with mean +- std.

  python -m wlsft_jax.main --config=configs/compare_clip.py

Expected on the embedded world (2-core CPU): see "Which claims hold on the embedded world" in
README.md, produced by this command; the report lands in workdir/compare_clip/report/.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    recipes.parse_arg(arg, ("world",))
    config = recipes.base(
        stages=("pretrain", "lp", "ft", "lpft", "flyp"),
        pretrain=recipes.pretrain_stage(),
        lp=recipes.lp_stage(),
        ft=recipes.stage("ft", input="pretrain",
                         optim=dict(lr=1e-4, wd=0.1, warmup_steps=15), steps=150),
        lpft=recipes.stage("ft", input="lp",
                           optim=dict(lr=3e-5, wd=0.1, warmup_steps=15), steps=150),
        flyp=recipes.stage("flyp", input="pretrain", templates="simple",
                           optim=dict(lr=1e-4, wd=0.1, warmup_steps=15), steps=150),
    )
    config.model.img.variant = "mu/4"  # The patch-4 model these results were measured with.
    config.lp.steps = 150
    config.num_seeds = 3
    config.data.eval_examples_per_domain = 500
    return config
