"""The methods: what each trains, on which data, with which loss — nothing else.

A `Method` hands the one training loop (`train.run`) its model, loss and input operations. What
it may change is the stage's optimizer config (regex schedule; `None` freezes):

- `pretrain`: CLIP contrastive loss on (image, caption) pairs from every pretraining domain.
- `flyp`:     the same loss on (ID image, its class name in a template sampled per example and
              step); both towers train (Goyal et al., 2023).
- `ft`, `lp`: image tower + linear head on L2-normalised features, cross-entropy on ID labels;
              the head starts as the zero-shot classifier (WiSE-FT). `lp` differs only by its
              schedule, which freezes everything but `head/...`; LP-FT is `lp` then `ft`.
- `supervised`: an image classifier trained from scratch by cross-entropy on the records'
              `label_key` ("label": the shape, "domain": the visual domain) over every
              pretraining domain: the embedded stand-in for a vision-only pretrained encoder.
- `dino`:     self-distillation with no labels (Caron et al., 2021) on the images of every
              pretraining domain: a student on multi-crop views matches a momentum teacher
              (`wlsft_jax.dino`); the teacher's image tower is the self-supervised encoder.
- `wls`:      weak language supervision: the CLIP loss on (ID image, its caption) pairs between
              a vision encoder with adapters, projected into a text encoder's space, and that
              text encoder (`models.wls`); its schedule trains only adapters and projection
              (`WLS_SCHEDULE`). A frozen text encoder's features of each caption are computed
              once (`captions.WithTextFeatures`), not at every step; a schedule that trains
              `txt/...` runs the text encoder on the tokens instead.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wlsft_jax import dino, objectives, sharding
from wlsft_jax.data import captions, transforms, world
from wlsft_jax.models import dino as dino_models, two_towers

CONTRASTIVE_METHODS = ("pretrain", "flyp")
CLASSIFIER_METHODS = ("ft", "lp")
SUPERVISED_METHODS = ("supervised",)
SELF_SUPERVISED_METHODS = ("dino",)
# DINO's teacher and center follow the student by momentum, never by gradient.
DINO_FROZEN = ("teacher", "center")
WLS_METHODS = ("wls",)
# WLS trains the adapters and the image projection; the encoders (and temperature) stay frozen.
WLS_SCHEDULE = ((r"img/.*/(film|replay|lora)/.*", {}), ("img/proj/.*", {}), (".*", None))


@dataclasses.dataclass(frozen=True)
class Method:
    """Everything the training loop needs to know about a method."""
    name: str
    model: nn.Module
    example_inputs: tuple  # Arguments after the rng for `model.init` (shapes only matter).
    loss_fn: Callable  # (model, params, batch, rng) -> (loss, metrics)
    train_source: Any  # A grain RandomAccessDataSource.
    train_operations: Sequence  # Per-example grain transforms, batching is the loader's.
    worker_count: int
    # (params, metrics, step) -> (params, metrics) after every optimizer step, inside the jitted
    # step: DINO's momentum teacher. Metrics it consumes are removed.
    after_step: Callable | None = None
    # params -> params applied to fresh params (DINO's teacher starts as the student).
    after_init: Callable | None = None

    def loss(self, params, batch, rng):
        return self.loss_fn(self.model, params, batch, rng)

    def abstract_params(self):
        """`jax.eval_shape` of the init, boxed with logical axis names."""
        return jax.eval_shape(self.model.init, jax.random.key(0), *self.example_inputs)["params"]

    def param_shardings(self, mesh):
        return sharding.logical_shardings(mesh, self.abstract_params())

    def init_params(self, mesh, seed):
        """Fresh params, created directly sharded on `mesh` (for pretraining from scratch)."""
        def init(rng):
            params = nn.unbox(self.model.init(rng, *self.example_inputs)["params"])
            return self.after_init(params) if self.after_init else params
        return jax.jit(init, out_shardings=self.param_shardings(mesh))(jax.random.key(seed))


def _clip_loss(zimg, ztxt, temperature):
    loss, metrics = objectives.clip_contrastive(zimg, ztxt, temperature)
    return loss, dict(metrics, temperature=temperature)


def contrastive_loss(model, params, batch, rng):
    del rng  # No dropout or stochastic depth in these models.
    zimg, ztxt, out = model.apply({"params": params}, batch["image"], batch["tokens"])
    return _clip_loss(zimg, ztxt, out["temperature"])


def text_features_contrastive_loss(model, params, batch, rng):
    """The CLIP loss between the image tower's features and the batch's precomputed text
    features (a frozen text encoder's: the model's text tower is not run)."""
    del rng
    zimg, _, out = model.apply({"params": params}, batch["image"], None)
    ztxt = two_towers.l2_normalize(batch[captions.TEXT_FEATURES_KEY])
    return _clip_loss(zimg, ztxt, out["temperature"])


def dino_loss(model, params, batch, rng, *, mean, std, settings):
    """DINO's loss on the multi-crop views of the batch's uint8 images; the batch's mean teacher
    output rides along in the metrics for `after_step`'s center update."""
    student_logits, teacher_logits = model.apply(
        {"params": params}, dino.views(batch["image"], rng, mean=mean, std=std))
    loss, batch_center = dino.loss(student_logits, teacher_logits, params["center"], settings)
    entropy = -jnp.mean(jnp.sum(jax.nn.softmax(teacher_logits / settings.teacher_temperature)
                                * jax.nn.log_softmax(teacher_logits / settings.teacher_temperature),
                                axis=-1))
    return loss, {"teacher_entropy": entropy, "batch_center": batch_center}


def _dino_method(method_name, *, stage_config, config, task):
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

    return Method(
        name=method_name, model=model, example_inputs=(example_views,),
        loss_fn=functools.partial(dino_loss, mean=tuple(data.mean), std=tuple(data.std),
                                  settings=settings),
        train_source=training_captions(task.pretrain_source, method_name),
        train_operations=[transforms.SelectKeys(("image",))], worker_count=data.worker_count,
        after_step=after_step, after_init=lambda params: dict(params, teacher=params["student"]))


def label_names(label_key: str, task) -> tuple[str, ...]:
    """The class names of the records' `label_key` ("label" or "domain")."""
    names = {"label": tuple(task.class_names), "domain": world.DOMAINS}
    if label_key not in names:
        raise ValueError(f"Unknown label_key {label_key!r}; valid label keys: {list(names)}.")
    return names[label_key]


def classification_loss(model, params, batch, rng, label_key="label"):
    del rng
    logits, _ = model.apply({"params": params}, batch["image"])
    loss, correct = objectives.softmax_xent(logits, batch[label_key])
    return loss, {"accuracy": jnp.mean(correct)}


def build(method_name, *, stage_config, config, tokenizer, models, task, templates):
    """The `Method` of a stage, reading its data from `task` (`data.tasks.Task`). `models` holds
    the built "clip" and "classifier" modules (and "wls", a `models.wls.Model`, for `wls`, whose
    task.caption_source records may carry their caption's text features: `WithTextFeatures`)."""
    data = config.data
    batch = stage_config.batch_size // stage_config.accum_steps
    images = jnp.zeros((batch, data.image_size, data.image_size, 3), jnp.float32)
    tokens = jnp.zeros((batch, tokenizer.context_length), jnp.int32)
    keep = transforms.SelectKeys
    image_operations = list(task.train_operations)
    if method_name in WLS_METHODS:
        # Records with a frozen text encoder's caption features train the image tower against
        # them; plain captions (a schedule that trains the text encoder) run it on tokens.
        if isinstance(task.caption_source, captions.WithTextFeatures):
            loss_fn, text_keys, text_operations = (
                text_features_contrastive_loss, (captions.TEXT_FEATURES_KEY,), [])
        else:
            loss_fn, text_keys, text_operations = (
                contrastive_loss, ("tokens",), [transforms.Tokenize(tokenizer)])
        return Method(
            name=method_name, model=models["wls"], example_inputs=(images, tokens),
            loss_fn=loss_fn, train_source=training_captions(task.caption_source, method_name),
            train_operations=[*task.caption_operations, *text_operations,
                              keep(("image", *text_keys))],
            worker_count=data.worker_count)
    if method_name in SELF_SUPERVISED_METHODS:
        return _dino_method(method_name, stage_config=stage_config, config=config, task=task)
    if method_name in SUPERVISED_METHODS:
        label_key = stage_config.get("label_key", "label")
        label_names(label_key, task)
        return Method(
            name=method_name, model=models["classifier"], example_inputs=(images,),
            loss_fn=functools.partial(classification_loss, label_key=label_key),
            train_source=training_captions(task.pretrain_source, method_name),
            train_operations=[*image_operations, keep(("image", label_key))],
            worker_count=data.worker_count)
    if method_name in CONTRASTIVE_METHODS:
        if method_name == "pretrain":
            source = training_captions(task.pretrain_source, method_name)
            text_operations = [transforms.Tokenize(tokenizer)]
        else:
            source = task.train_source
            text_operations = [transforms.ClassPrompts(tokenizer, tuple(task.class_names),
                                                       tuple(templates))]
        return Method(
            name=method_name, model=models["clip"], example_inputs=(images, tokens),
            loss_fn=contrastive_loss, train_source=source,
            train_operations=[*image_operations, *text_operations, keep(("image", "tokens"))],
            worker_count=data.worker_count)
    return Method(
        name=method_name, model=models["classifier"], example_inputs=(images,),
        loss_fn=classification_loss, train_source=task.train_source,
        train_operations=[*image_operations, keep(("image", "label"))],
        worker_count=data.worker_count)


def training_captions(source, method_name):
    """`source`, or a ValueError when the data has none for `method_name`."""
    if source is None:
        raise ValueError(f"Method {method_name!r} has no training data here: 'pretrain', "
                         "'dino' and 'supervised' read the embedded world's data.pretrain_domains, 'wls' "
                         "the world's captions or data.captions; on real data start from "
                         "pretrained weights (init.format='hf_clip' / 'hf_vit') and fine-tune "
                         "with 'ft', 'lp', 'flyp' or 'wls'.")
    return source
