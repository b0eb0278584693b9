r"""Every method on one footing from the shipped world_clip: zero-shot, LP, FT, LP-FT and FLYP,
each swept over WiSE-FT's alphas, over 3 seeds; writes the full report with mean +- std.

  python -m wlsft_jax.main --config=configs/compare_clip.py

FT and FLYP start from world_clip (input "init"), LP-FT from the LP stage. Expected on the
embedded world (2-core CPU): see "Which claims hold on the embedded world" in README.md, produced
by this command; the report lands in workdir/compare_clip/report/.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    recipes.parse_arg(arg, ("world",))
    config = recipes.from_world_clip(
        stages=("lp", "ft", "lpft", "flyp"),
        lp=recipes.lp_stage(steps=150),
        ft=recipes.stage("ft", input=recipes.INITIAL_WEIGHTS,
                         optim=dict(lr=1e-4, wd=0.1, warmup_steps=15), steps=150),
        lpft=recipes.stage("ft", input="lp",
                           optim=dict(lr=3e-5, wd=0.1, warmup_steps=15), steps=150),
        flyp=recipes.stage("flyp", input=recipes.INITIAL_WEIGHTS, templates="simple",
                           optim=dict(lr=1e-4, wd=0.1, warmup_steps=15), steps=150),
    )
    config.num_seeds = 3
    return config
