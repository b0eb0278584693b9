"""`dino`: self-distillation with no labels (Caron et al., 2021) on the images of every
pretraining domain of the embedded world: a student on multi-crop views matches a momentum
teacher (`wlsft_jax.dino`). Trains from scratch; the teacher's image tower is the
self-supervised encoder, scored by k-NN on its final-norm class token."""
import functools

import jax
import jax.numpy as jnp

from wlsft_jax import checks, dino, optim, train
from wlsft_jax.data import transforms
from wlsft_jax.methods import _common
from wlsft_jax.models import dino as dino_models

RUNS_ONCE = False
FROM_SCRATCH = True
EVALUATOR = "knn"
STAGE_KEYS = ()
# DINO's teacher and output center move by momentum (`wlsft_jax.dino`), never by the optimizer.
SCHEDULE = (("teacher/.*", None), ("center", None), ("student/.*", {}))


def loss_fn(model, params, batch, rng, *, mean, std, settings):
    """DINO's loss on the multi-crop views of the batch's uint8 images; the batch's mean teacher
    output rides along in the metrics for `after_step`'s center update."""
    student_logits, teacher_logits = model.apply(
        {"params": params}, dino.views(batch["image"], rng, mean=mean, std=std))
    loss, batch_center = dino.loss(student_logits, teacher_logits, params["center"], settings)
    entropy = -jnp.mean(jnp.sum(jax.nn.softmax(teacher_logits / settings.teacher_temperature)
                                * jax.nn.log_softmax(teacher_logits / settings.teacher_temperature),
                                axis=-1))
    return loss, {"teacher_entropy": entropy, "batch_center": batch_center}


def build(context, name, stage_config) -> _common.Stage:
    del name
    config = context.config
    data = config.data
    settings = dino.Settings()
    image = dict(config.model.img, image_size=data.image_size, dtype_mm=config.model.dtype)
    model = dino_models.Model(img=image, head=dict(
        hidden_dim=settings.hidden_dim, bottleneck_dim=settings.bottleneck_dim,
        num_prototypes=settings.num_prototypes), num_global_views=dino.GLOBAL_VIEWS)
    batch = stage_config.batch_size // stage_config.accum_steps
    example_views = [jnp.zeros((batch, data.image_size, data.image_size, 3))] * dino.GLOBAL_VIEWS
    example_views += [jnp.zeros((batch, data.image_size // 2, data.image_size // 2, 3))
                      ] * dino.LOCAL_VIEWS

    def after_step(params, metrics, step):
        metrics = dict(metrics)
        params = dino.momentum_update(params, metrics.pop("batch_center"), step + 1,
                                      stage_config.steps, settings)
        return params, metrics

    spec = train.TrainSpec(
        model=model, example_inputs=(example_views,),
        loss_fn=functools.partial(loss_fn, mean=tuple(data.mean), std=tuple(data.std),
                                  settings=settings),
        train_source=_common.training_data(context.task.pretrain_source, "dino"),
        train_operations=[transforms.SelectKeys(("image",))], worker_count=data.worker_count,
        after_step=after_step, after_init=lambda params: dict(params, teacher=params["student"]))
    return _common.Stage(spec, _common.fresh_or_given(spec, context.mesh),
                         evaluated=lambda params: {"img": params["teacher"]["img"]})


def check_config(config, name) -> None:
    """The schedule freezes the teacher and center and trains the student; a config whose last
    stage is `dino` sets eval.knn_ks / knn_report_k and none of the classifier / text keys."""
    paths = {"teacher": {"img": 0}, "center": 0, "student": {"img": 0}}
    frozen = optim.frozen_mask(config[name].optim, paths)
    if not (frozen["teacher"]["img"] and frozen["center"]) or frozen["student"]["img"]:
        raise ValueError(f"config.{name}.optim.schedule must freeze 'teacher/...' and 'center' "
                         f"(they follow the student by momentum) and train 'student/...', e.g. "
                         f"{list(SCHEDULE)}.")
    if config.stages[-1] != name:
        return
    missing = [f"eval.{key}" for key in ("knn_ks", "knn_report_k") if key not in config.eval]
    if missing:
        raise ValueError(f"A config whose last stage is 'dino' needs {missing}; start from "
                         "recipes.dino_base().")
    unread = [f"eval.{key}" for key in ("report_metrics", "templates", "representation", "alphas")
              if key in config.eval]
    unread += [f"model.{key}" for key in ("txt", "embed_dim") if key in config.model]
    if unread:
        raise ValueError(f"Config key(s) {unread} are not read by a 'dino' config (it trains and "
                         "judges an image tower by k-NN); remove them.")
    checks.knn_ks(config)
