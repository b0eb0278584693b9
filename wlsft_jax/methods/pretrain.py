"""`pretrain`: the CLIP contrastive loss on (image, caption) pairs from every pretraining domain
of the embedded world; both towers train. Its output is the pretrained CLIP that later stages
fine-tune and are compared with."""
from wlsft_jax import objectives, train
from wlsft_jax.data import transforms
from wlsft_jax.methods import _common

FROM_SCRATCH = True
RUNS_ONCE = True
SCORED_BY = _common.ANY_EVALUATOR  # Periodically; the run reports it as ZERO_SHOT.
STAGE_KEYS = ()


def build(context, name, stage_config) -> _common.Stage:
    task, tokenizer = context.task, context.tokenizer
    spec = train.TrainSpec(
        model=context.models["clip"],
        example_inputs=_common.example_inputs(context, stage_config, text=True),
        loss_fn=objectives.contrastive_loss,
        train_source=_common.training_data(task.pretrain_source, "pretrain"),
        train_operations=[*task.train_operations, transforms.Tokenize(tokenizer),
                          transforms.SelectKeys(("image", "tokens"))],
        worker_count=context.config.data.worker_count)
    return _common.Stage(spec, _common.clip_start(spec, context.mesh, name=name,
                                                  method="pretrain"))
