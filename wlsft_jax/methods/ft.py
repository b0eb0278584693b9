"""`ft`: the image tower and a linear head on its L2-normalised features trained by cross-entropy
on the ID labels. A CLIP input becomes its image tower with the zero-shot head (WiSE-FT), so the
head starts as the zero-shot classifier. From init.format="scratch" it trains a randomly
initialised classifier on the ID data only: the models of an effective-robustness testbed
(`configs/testbed_world.py`)."""
from wlsft_jax import objectives, train
from wlsft_jax.data import transforms
from wlsft_jax.evals import zero_shot
from wlsft_jax.methods import _common

FROM_SCRATCH = True
RUNS_ONCE = False
SCORED_BY = _common.ANY_EVALUATOR
STAGE_KEYS = ()


def build(context, name, stage_config) -> _common.Stage:
    del name  # Any input becomes a classifier.
    task = context.task
    spec = train.TrainSpec(
        model=context.models["classifier"],
        example_inputs=_common.example_inputs(context, stage_config, text=False),
        loss_fn=objectives.classification_loss, train_source=task.train_source,
        train_operations=[*task.train_operations, transforms.SelectKeys(("image", "label"))],
        worker_count=context.config.data.worker_count)

    return _common.Stage(spec, classifier_start(spec, context))


def classifier_start(spec: train.TrainSpec, context):
    """A `start` that makes a classifier of its input: a CLIP's image tower with its zero-shot
    head, a classifier as it is, fresh params for none."""
    fresh_or_given = _common.fresh_or_given(spec, context.mesh)

    def start(params, seed):
        if params is not None and "txt" in params:
            return zero_shot.as_classifier(params, context.head_fn)
        return fresh_or_given(params, seed)

    return start
