r"""Every method on one footing from the shipped world_clip: zero-shot, LP, FT, LP-FT and FLYP,
each swept over WiSE-FT's alphas, over 3 seeds; writes the full report with mean +- std.

  python -m wlsft_jax.main --config=configs/compare_clip.py

FT and FLYP start from world_clip (input "init"), LP-FT from the LP stage (the L-BFGS probe,
its C chosen as it is fitted); each fine-tuning stage's lr and steps were chosen on photo's
validation split (recipes.WORLD_CLIP_TUNED, launch/tune.py).
Expected on the embedded world (36 min on the 2-core CPU), ID photo / average OOD, mean of 3
seeds: LP 77.4 / 64.9, FT 85.0 / 48.5, LP-FT 85.4 / 47.7, FLYP 84.6 / 45.9, zero-shot 64.0 /
62.1; the claims and their spreads: "Which claims hold on the embedded world" in README.md,
produced by this command; the report lands in workdir/compare_clip/report/.
"""
from wlsft_jax import recipes


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world",))
    stages = ("lp", "ft", "lpft", "flyp")
    config = recipes.from_world_clip(
        stages=stages, **{name: recipes.world_clip_stage(name) for name in stages})
    config.num_seeds = 3
    return recipes.with_evals(config, args.evals)
