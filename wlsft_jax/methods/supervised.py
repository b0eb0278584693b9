"""`supervised`: an image classifier trained from scratch by cross-entropy on the records'
`label_key` ("label": the shape, "domain": the visual domain) over every pretraining domain of the
embedded world: the stand-in for a vision-only pretrained encoder (e.g. before `wls`)."""
import functools

from wlsft_jax import objectives, train
from wlsft_jax.data import transforms, world
from wlsft_jax.methods import _common

FROM_SCRATCH = True
RUNS_ONCE = True
SCORED_BY = ()  # A stand-in, never scored.
STAGE_KEYS = ("label_key",)
FEEDS = "wls"  # The stand-in vision encoder: a config with it has a `wls` stage.


def label_names(label_key: str, task) -> tuple[str, ...]:
    """The class names of the records' `label_key` ("label" or "domain")."""
    names = {"label": tuple(task.class_names), "domain": world.DOMAINS}
    if label_key not in names:
        raise ValueError(f"Unknown label_key {label_key!r}; valid label keys: {list(names)}.")
    return names[label_key]


def build(context, name, stage_config) -> _common.Stage:
    del name
    task = context.task
    label_key = stage_config.get("label_key", "label")
    model = context.models["classifier"].clone(
        num_classes=len(label_names(label_key, task)))
    spec = train.TrainSpec(
        model=model, example_inputs=_common.example_inputs(context, stage_config, text=False),
        loss_fn=functools.partial(objectives.classification_loss, label_key=label_key),
        train_source=_common.training_data(task.pretrain_source, "supervised"),
        train_operations=[*task.train_operations, transforms.SelectKeys(("image", label_key))],
        worker_count=context.config.data.worker_count)
    return _common.Stage(spec, _common.fresh_or_given(spec, context.mesh))
