"""`dino`: self-distillation with no labels (Caron et al., 2021) on the images of every
pretraining domain of the embedded world: a student on multi-crop views matches a momentum
teacher. Trains from scratch; the teacher's image tower is the self-supervised encoder, scored
by k-NN on its final-norm class token.

The views are cut inside the jitted step from the batch's uint8 images (no extra host work):
`GLOBAL_VIEWS` random resized crops at the image size (area scale `Settings.global_scale`) and
`LOCAL_VIEWS` at half of it (`Settings.local_scale`), each flipped at random and colour-jittered
(brightness, contrast, saturation, a random channel order standing in for hue, grayscale). Colour is strong in the
world (8 object colours), so without colour jitter the views agree through colour alone. The
teacher and the output center follow after every optimizer step (`train.TrainSpec.after_step`).
A stage's `settings` (`--config.dino.settings.teacher_temperature=0.07`) override `Settings`.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from wlsft_jax import checks, objectives, optim, train
from wlsft_jax.data import transforms
from wlsft_jax.methods import _common
from wlsft_jax.models import dino as dino_models

RUNS_ONCE = False
FROM_SCRATCH = True
SCORED_BY = _common.FEATURE_EVALUATORS  # No classifier head, no text tower.
STAGE_KEYS = ("settings",)
# DINO's teacher and output center move by momentum (`momentum_update`), never by the optimizer.
SCHEDULE = (("teacher/.*", None), ("center", None), ("student/.*", {}))

GLOBAL_VIEWS, LOCAL_VIEWS = 2, 4
# NumPy, not jax: importing this module must not start the XLA backend before a multi-host run
# calls jax.distributed.initialize().
CHANNEL_ORDERS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


@dataclasses.dataclass(frozen=True)
class Settings:
    """DINO's temperatures, momenta, head and crop scales (its ViT-S defaults but the teacher
    momentum, and fewer prototypes for a tiny world)."""
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    center_momentum: float = 0.9
    # Rises to 1 along a cosine over the stage. DINO's 0.996 suits its 100+ epochs; a few
    # thousand steps need a teacher that follows faster.
    teacher_momentum: float = 0.99
    num_prototypes: int = 1024
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    global_scale: tuple[float, float] = (0.35, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.35)

    @classmethod
    def of_stage(cls, stage_config) -> "Settings":
        """The defaults, overridden by the stage's `settings` dict (unknown names rejected)."""
        overrides = dict(stage_config.get("settings") or {})
        checks.known_keys(overrides, {field.name for field in dataclasses.fields(cls)},
                          "the 'settings' of a 'dino' stage")
        return cls(**{key: tuple(value) if isinstance(value, (list, tuple)) else value
                      for key, value in overrides.items()})


def _crop_one(image, rng, out_size, scale):
    """A random resized crop of one float image [H, W, C] to out_size x out_size, maybe flipped."""
    size = image.shape[0]
    area_rng, ratio_rng, x_rng, y_rng, flip_rng = jax.random.split(rng, 5)
    area = jax.random.uniform(area_rng, (), minval=scale[0], maxval=scale[1]) * size * size
    log_ratio = jax.random.uniform(ratio_rng, (), minval=math.log(3 / 4), maxval=math.log(4 / 3))
    ratio = jnp.exp(log_ratio)
    width = jnp.clip(jnp.sqrt(area * ratio), 1.0, size)
    height = jnp.clip(jnp.sqrt(area / ratio), 1.0, size)
    left = jax.random.uniform(x_rng, ()) * (size - width)
    top = jax.random.uniform(y_rng, ()) * (size - height)
    zoom = jnp.array([out_size / height, out_size / width])
    crop = jax.image.scale_and_translate(
        image, (out_size, out_size, image.shape[-1]), (0, 1), zoom,
        -jnp.array([top, left]) * zoom, method="linear", antialias=True)
    return jnp.where(jax.random.bernoulli(flip_rng), crop[:, ::-1], crop)


def _jitter_one(image, rng):
    """Colour jitter of one image in [0, 1] (applied with probability 0.8), then grayscale with
    probability 0.2."""
    apply_rng, b_rng, c_rng, s_rng, order_rng, gray_rng = jax.random.split(rng, 6)
    grey = lambda x: jnp.mean(x, axis=-1, keepdims=True)
    jittered = image * jax.random.uniform(b_rng, (), minval=0.6, maxval=1.4)
    mean = jnp.mean(grey(jittered))
    jittered = mean + (jittered - mean) * jax.random.uniform(c_rng, (), minval=0.6, maxval=1.4)
    jittered = grey(jittered) + (jittered - grey(jittered)) * jax.random.uniform(
        s_rng, (), minval=0.6, maxval=1.4)
    jittered = jittered[..., jnp.asarray(CHANNEL_ORDERS)[jax.random.randint(order_rng, (), 0, 6)]]
    image = jnp.where(jax.random.bernoulli(apply_rng, 0.8), jittered, image)
    image = jnp.where(jax.random.bernoulli(gray_rng, 0.2),
                      jnp.broadcast_to(grey(image), image.shape), image)
    return jnp.clip(image, 0.0, 1.0)


def views(images_uint8, rng, *, mean, std, settings: Settings):
    """The multi-crop views of a batch: a list of GLOBAL_VIEWS arrays [B, S, S, 3] then
    LOCAL_VIEWS arrays [B, S/2, S/2, 3], normalised with `mean` / `std`."""
    images = images_uint8.astype(jnp.float32) / 255.0
    size = images.shape[1]
    specs = ([(size, settings.global_scale)] * GLOBAL_VIEWS
             + [(size // 2, settings.local_scale)] * LOCAL_VIEWS)
    out = []
    for index, (out_size, scale) in enumerate(specs):
        view_rng = jax.random.fold_in(rng, index)
        crop_rngs, jitter_rngs = jax.random.split(view_rng, (2, images.shape[0]))
        view = jax.vmap(lambda image, r: _crop_one(image, r, out_size, scale))(images, crop_rngs)
        view = jax.vmap(_jitter_one)(view, jitter_rngs)
        out.append((view - jnp.asarray(mean)) / jnp.asarray(std))
    return out


def teacher_momentum(step, total_steps, settings: Settings):
    """DINO's cosine schedule from `settings.teacher_momentum` at step 0 to 1 at the end."""
    progress = jnp.minimum(step / jnp.maximum(total_steps, 1), 1.0)
    return 1.0 - (1.0 - settings.teacher_momentum) * (jnp.cos(jnp.pi * progress) + 1) / 2


def momentum_update(params, batch_center, step, total_steps, settings: Settings):
    """The teacher moves toward the student, the center toward the batch's teacher output."""
    momentum = teacher_momentum(step, total_steps, settings)
    teacher = jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s,
                           params["teacher"], params["student"])
    center = (settings.center_momentum * params["center"]
              + (1 - settings.center_momentum) * batch_center)
    return dict(params, teacher=teacher, center=center)


def loss_fn(model, params, batch, rng, *, mean, std, settings):
    """DINO's loss on the multi-crop views of the batch's uint8 images; the batch's mean teacher
    output rides along in the metrics for `after_step`'s center update."""
    student_logits, teacher_logits = model.apply(
        {"params": params}, views(batch["image"], rng, mean=mean, std=std, settings=settings))
    loss, batch_center = objectives.self_distillation(
        student_logits, teacher_logits, params["center"],
        student_temperature=settings.student_temperature,
        teacher_temperature=settings.teacher_temperature)
    entropy = -jnp.mean(jnp.sum(jax.nn.softmax(teacher_logits / settings.teacher_temperature)
                                * jax.nn.log_softmax(teacher_logits / settings.teacher_temperature),
                                axis=-1))
    return loss, {"teacher_entropy": entropy, "batch_center": batch_center}


def build(context, name, stage_config) -> _common.Stage:
    del name
    config = context.config
    data = config.data
    settings = Settings.of_stage(stage_config)
    image = dict(config.model.img, image_size=data.image_size, dtype_mm=config.model.dtype)
    model = dino_models.Model(img=image, head=dict(
        hidden_dim=settings.hidden_dim, bottleneck_dim=settings.bottleneck_dim,
        num_prototypes=settings.num_prototypes), num_global_views=GLOBAL_VIEWS)
    batch = stage_config.batch_size // stage_config.accum_steps
    example_views = [jnp.zeros((batch, data.image_size, data.image_size, 3))] * GLOBAL_VIEWS
    example_views += [jnp.zeros((batch, data.image_size // 2, data.image_size // 2, 3))
                      ] * LOCAL_VIEWS

    def after_step(params, metrics, step):
        metrics = dict(metrics)
        params = momentum_update(params, metrics.pop("batch_center"), step + 1,
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
    """The settings are known; the schedule freezes the teacher and center and trains the
    student; a config whose last stage is `dino` sets none of the text keys."""
    Settings.of_stage(config[name])
    paths = {"teacher": {"img": 0}, "center": 0, "student": {"img": 0}}
    frozen = optim.frozen_mask(config[name].optim, paths)
    if not (frozen["teacher"]["img"] and frozen["center"]) or frozen["student"]["img"]:
        raise ValueError(f"config.{name}.optim.schedule must freeze 'teacher/...' and 'center' "
                         f"(they follow the student by momentum) and train 'student/...', e.g. "
                         f"{list(SCHEDULE)}.")
    if config.stages[-1] != name:
        return
    unread = [f"eval.{key}" for key in ("templates", "alphas") if key in config.eval]
    unread += [f"model.{key}" for key in ("txt", "embed_dim") if key in config.model]
    if unread:
        raise ValueError(f"Config key(s) {unread} are not read by a 'dino' config (it trains an "
                         "image tower and judges it as trained, with no text tower); remove "
                         "them.")
