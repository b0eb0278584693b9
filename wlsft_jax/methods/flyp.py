"""`flyp`: fine-tune like you pretrain (Goyal et al., 2023). The CLIP contrastive loss on (ID
image, its class name in a template sampled per example and step); both towers train. The stage
key `templates` names the template set (default "simple")."""
from wlsft_jax import objectives, train
from wlsft_jax.data import templates, transforms
from wlsft_jax.methods import _common

FROM_SCRATCH = False
RUNS_ONCE = False
SCORED_BY = _common.ANY_EVALUATOR
STAGE_KEYS = ("templates",)


def build(context, name, stage_config) -> _common.Stage:
    task, tokenizer = context.task, context.tokenizer
    prompts = transforms.ClassPrompts(
        tokenizer, tuple(task.class_names),
        tuple(templates.get_templates(stage_config.get("templates", "simple"))))
    spec = train.TrainSpec(
        model=context.models["clip"],
        example_inputs=_common.example_inputs(context, stage_config, text=True),
        loss_fn=objectives.contrastive_loss, train_source=task.train_source,
        train_operations=[*task.train_operations, prompts,
                          transforms.SelectKeys(("image", "tokens"))],
        worker_count=context.config.data.worker_count)
    return _common.Stage(spec, _common.clip_start(spec, context.mesh, name=name, method="flyp"))
