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
    stages = ("lp", "ft", "lpft", "flyp")
    config = recipes.from_world_clip(
        stages=stages, **{name: recipes.world_clip_stage(name) for name in stages})
    config.num_seeds = 3
    return config
