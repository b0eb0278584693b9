"""`lp`: linear probing as LP-FT does it, with no training loop: an L2-regularised logistic
regression head fitted by L-BFGS (`evals.linear_probe.fit_linear_probe`) on the frozen,
L2-normalised image features of the ID training images (their evaluation view, no augmentation),
its strength C chosen from `cs` on the ID validation split. The image tower is the input's; a
CLIP input becomes its image tower with the zero-shot head first, which stays WiSE-FT's alpha 0.
LP-FT is `lp`, then `ft` from its output: fine-tuning starts from the fitted head.

The fit is saved as the stage's one checkpoint (step 1, with its provenance), so a rerun
restores it and a sweep reads it like any stage directory.
"""
import jax
import jax.numpy as jnp
from absl import logging

from wlsft_jax import checkpoint, objectives, train
from wlsft_jax.evals import features as features_lib, linear_probe
from wlsft_jax.methods import _common, ft

FROM_SCRATCH = False
RUNS_ONCE = False
SCORED_BY = _common.ANY_EVALUATOR
# Its stages take `method`, `input` and these only: no training loop reads them.
TRAINING_LOOP = False
STAGE_KEYS = ("cs", "max_iter")
FIT_STEP = 1  # The step the fitted head is saved at.


def check_config(config, name) -> None:
    """Its C grid and step count, and a stage that can be fitted: `cs` and `max_iter` set."""
    stage = config[name]
    missing = [key for key in STAGE_KEYS if key not in stage]
    if missing:
        raise ValueError(f"config.{name} (method 'lp') lacks {missing}; start from "
                         "recipes.lp_stage().")
    try:
        linear_probe.check_grid(tuple(stage.cs), stage.max_iter)
    except ValueError as error:
        raise ValueError(f"config.{name}: {error}") from None


def build(context, name, stage_config) -> _common.Stage:
    del name
    task, data = context.task, context.config.data
    spec = train.TrainSpec(  # What is fitted: the classifier's head, by its loss.
        model=context.models["classifier"],
        example_inputs=(jnp.zeros((1, data.image_size, data.image_size, 3), jnp.float32),),
        loss_fn=objectives.classification_loss, train_source=task.train_eval_set.source,
        train_operations=task.train_eval_set.operations, worker_count=task.eval_worker_count)
    features_fn = features_lib.image_features_fn(spec.model, "features")

    def fit(*, name, stage_config, spec, init_params, mesh, workdir, seed, writer,
            periodic_eval=None, init_source=""):
        """Fits (or restores) the head on `init_params`' image tower; `train.run`'s arguments."""
        del seed  # L-BFGS from zero is deterministic.
        shardings = spec.param_shardings(mesh)
        with checkpoint.Checkpointer(workdir, async_save=False) as manager:
            if manager.latest_step() == FIT_STEP:
                logging.info("[%s] restored the fitted probe from %s", name, workdir)
                return manager.restore_params(FIT_STEP, checkpoint.restore_target(
                    init_params, shardings))

            kernel, bias, c = linear_probe.fit_on_task(
                lambda eval_set: linear_probe.probe_features(features_fn, init_params["img"],
                                                             eval_set, context),
                task, cs=stage_config.cs, max_iter=stage_config.max_iter)
            params = jax.device_put({"img": init_params["img"],
                                     "head": {"kernel": kernel, "bias": bias}}, shardings)
            logging.info("[%s] probe fitted: C=%.3g", name, c)
            writer.write_scalars(FIT_STEP, {f"{name}/C": c})
            if periodic_eval:
                values = periodic_eval(params)
                writer.write_scalars(FIT_STEP, {f"{name}/eval/{k}": v for k, v in values.items()})
                train.write_eval_curve(workdir, [dict(step=FIT_STEP, **values)])
            manager.save(FIT_STEP, {"params": params}, force=True,
                         metadata=checkpoint.provenance(name, init_source, init_params))
        writer.flush()
        return params

    return _common.Stage(spec, ft.classifier_start(spec, context), train=fit)
