"""Training methods, looked up by name: one module per method in this package, so adding a
method is adding a file (modules whose name starts with "_" are shared helpers).

A method module defines:
- `RUNS_ONCE`: True for pretraining (`pretrain`, `supervised`): the stage trains once, with seed
  `config.seed`, and its output becomes the reference model that later stages start from and
  are compared with (WiSE-FT's alpha 0). False for fine-tuning: it trains for every seed and is
  then evaluated across alphas.
- `FROM_SCRATCH`: True if a stage of it may start without weights (its model initialised).
- `SCORED_BY`: the evaluator types (`wlsft_jax.evals`) that can score its stages (and their
  periodic evaluation, `eval_every`); every evaluator of a config must be one of them, () for a
  stand-in that is never scored.
- `STAGE_KEYS`: the stage config keys that only this method reads.
- `build(context, name, stage_config) -> _common.Stage`: its `train.TrainSpec` (model, loss,
  data, read from `context`, an `experiment.Context`) and how its starting params are made from
  the stage's input (e.g. a CLIP's image tower with its zero-shot head).
- optionally `check_config(config, name)`: checks of its own, before anything is read;
  `CONFIG_KEYS`: config keys (dotted) that only it reads; `TRAINING_LOOP = False` for a method
  whose stages run no training loop (`lp`: their Stage's own `train`; they take `method`,
  `input` and the STAGE_KEYS only, see `trains_by_loop`); `FEEDS`: the method whose stage a
  stage of this one exists to feed (the config must have one).
"""
import importlib
import pkgutil


def names() -> tuple[str, ...]:
    """Every method's name."""
    return tuple(info.name for info in pkgutil.iter_modules(__path__)
                 if not info.name.startswith("_"))


def trains_by_loop(name: str) -> bool:
    """Whether stages of method `name` run the training loop (and take its keys: steps,
    batch_size, optim, ...)."""
    return getattr(get(name), "TRAINING_LOOP", True)


def get(name: str):
    """The method module `name`; ValueError naming the valid ones if there is none."""
    if name not in names():
        raise ValueError(f"Unknown method {name!r}; valid methods: {list(names())}.")
    return importlib.import_module(f"{__name__}.{name}")
