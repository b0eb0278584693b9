r"""The effective-robustness testbed of the embedded world: world_clip's image tower
architecture trained from scratch on photo only (no pretraining, no other domain) at four
budgets, as Taori et al.'s testbed holds models trained on ImageNet alone.

  python -m wlsft_jax.main --config=configs/testbed_world.py
  python launch/fit_testbed.py --results=workdir/testbed_world/report/results.json \
      --out=wlsft_jax/data/testbeds/world.json

The first command trains and scores the four models (ID photo, OOD the other four domains,
1,000 test images each); the second fits the line on logit axes through them that every world
report measures effective robustness against (`wlsft_jax.testbed`, config eval.baseline).
Expected (2-core CPU): see the points and line in wlsft_jax/data/testbeds/world.json and
README's "Effective robustness".
"""
from wlsft_jax import recipes

BUDGETS = (250, 500, 1_000, 2_000)  # Steps at batch size 128: a spread of ID accuracies.


def get_config(arg=None):
    args = recipes.parse_arg(arg, data=("world",))
    stages = {f"scratch_{steps}": recipes.stage(
        "ft", input=recipes.INITIAL_WEIGHTS, steps=steps,
        optim=dict(lr=1e-3, wd=0.1, warmup_steps=steps // 10)) for steps in BUDGETS}
    config = recipes.base(stages=tuple(stages), **stages)
    config.data.pretrain_domains = ()  # Nothing is pretrained: photo only.
    config.eval.baseline = None  # This run makes the testbed.
    return recipes.with_evals(config, args.evals)
