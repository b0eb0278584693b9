"""What the stages and evaluators of one experiment share, each built once when first asked
for: the tokenizer, the task's data, the models, the starting weights `config.init` names and
the zero-shot head of a CLIP.

The starting weights are read in one place (`initial_weights`): a new source of pretrained
weights is one more branch there.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from etils import epath
from jax.experimental import multihost_utils

from wlsft_jax import checkpoint, convert, pretrained, sharding
from wlsft_jax.data import pipeline, tasks
from wlsft_jax.data import tokenizer as tokenizer_lib, world
from wlsft_jax.evals import zero_shot
from wlsft_jax.models import classifier, two_towers, vit_params

# Each tower's memory options (models/vit.py, launch/MEMORY.md) that a config may set.
MEMORY_LEVERS = ("scan", "remat_policy")


class Context:
    """The shared parts of one experiment (or sweep) of `config` on `mesh`, writing to
    `workdir` (the world's tokenizer) and `writer` (clu metrics)."""

    def __init__(self, config, *, workdir: epath.Path, mesh, writer=None):
        self.config, self.workdir, self.mesh, self.writer = config, workdir, mesh, writer

    @functools.cached_property
    def tokenizer(self) -> tokenizer_lib.Tokenizer:
        return build_tokenizer(self.config, self.workdir)

    @functools.cached_property
    def task(self) -> tasks.Task:
        return tasks.build(self.config.data, seed=self.config.seed)

    @functools.cached_property
    def _initial(self):
        return initial_weights(self.config, self.tokenizer,
                               num_classes=len(self.task.class_names))

    @functools.cached_property
    def models(self) -> dict:
        """"classifier" (an image classifier of the task's classes), and "clip" unless the
        config is vision-only (no `model.txt`), in the architecture of the starting weights."""
        return self._initial[0]

    @functools.cached_property
    def initial_params(self):
        """The params `config.init` names (None for "scratch")."""
        return self._initial[1]

    @functools.cached_property
    def head_fn(self):
        """Jitted clip_params -> the zero-shot head of the task's classes in eval.templates."""
        return zero_shot.zero_shot_head_fn(self.config, self.models["clip"], self.tokenizer,
                                 self.task.class_names)

    def eval_batches(self, eval_set):
        """The batches of `eval_set` at eval.batch_size, placed on the mesh."""
        for batch in pipeline.eval_batches(eval_set.source,
                                           batch_size=self.config.eval.batch_size,
                                           operations=eval_set.operations,
                                           worker_count=self.task.eval_worker_count):
            yield sharding.put_batch(self.mesh, batch)


def build_tokenizer(config, workdir: epath.Path) -> tokenizer_lib.Tokenizer:
    """CLIP's BPE from the user's files, a text encoder's own tokenizer.json ("hf_json"), or the
    world's word-level tokenizer (kept in workdir)."""
    settings = config.tokenizer
    if settings.kind == "hf_json":
        return tokenizer_lib.from_tokenizer_json(
            epath.Path(config.text_encoder.path) / "tokenizer.json",
            context_length=settings.context_length)
    if settings.kind == "clip_bpe":  # Default: the files beside a Hugging Face CLIP checkpoint.
        folder = epath.Path(config.init.path or ".")
        return tokenizer_lib.clip_bpe(settings.vocab_path or folder / "vocab.json",
                                      settings.merges_path or folder / "merges.txt",
                                      context_length=settings.context_length)
    directory = workdir / "tokenizer"
    # Process 0 writes it once; the others wait at the barrier, so none reads a half-written one.
    if jax.process_index() == 0 and not directory.exists():
        tokenizer_lib.world_tokenizer(world.VOCABULARY,
                                      context_length=settings.context_length).save(directory)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("wlsft_jax: tokenizer saved")
    return tokenizer_lib.Tokenizer.load(directory)


def build_models(config, tokenizer, *, num_classes: int) -> dict:
    """The two-tower CLIP and the `num_classes`-way image classifier sharing its image tower's
    layout; a vision-only config (no `model.txt`, e.g. WLS's stand-in) has the classifier only."""
    model = config.model
    image = dict(model.img, image_size=config.data.image_size, dtype_mm=model.dtype)
    if "txt" not in model:
        return {"classifier": classifier.Model(img=image, num_classes=num_classes)}
    text = dict(model.txt, vocab_size=tokenizer.vocab_size,
                context_length=tokenizer.context_length, eot_id=tokenizer.eot_id,
                dtype_mm=model.dtype)
    return {
        "clip": two_towers.Model(image=image, text=text, out_dim=model.embed_dim),
        "classifier": classifier.Model(img=dict(image, proj_dim=model.embed_dim),
                                       num_classes=num_classes),
    }


def initial_weights(config, tokenizer, *, num_classes: int):
    """(models as `build_models` gives them, params) of the weights `config.init` names.

    "scratch": params None. "pretrained": the model shipped in the package as init.name (a CLIP,
    or an image tower as "hf_vit" gives it). "hf_clip": a Hugging Face CLIP, the models in its
    architecture. "orbax": the CLIP of a stage directory of an earlier run (its latest
    checkpoint) in `config.model`'s layout. "hf_vit": a Hugging Face ViT (e.g. DINO) as
    `{"img": ...}`, the classifier in its architecture (a vision-only run); "big_vision":
    likewise, the image tower of a big_vision ViT `.npz` (its classification head dropped).
    """
    init = config.init
    data = config.data
    if init.path and not epath.Path(init.path).exists():
        raise FileNotFoundError(f"init.path={init.path!r} does not exist (init.format="
                                f"{init.format!r}); give a local or gs:// path to the weights.")
    if init.format == "pretrained" and pretrained.named(init.name).kind == "vit":
        model, params, _ = pretrained.load(init.name)
        return vision_only(model, params, num_classes=num_classes)
    if init.format == "hf_vit":
        return vision_only(*convert.from_hf_vit(init.path, image_size=data.image_size,
                                                dtype_mm=config.model.dtype),
                           num_classes=num_classes)
    if init.format == "big_vision":
        return vision_only(*convert.from_big_vision(init.path, image_size=data.image_size,
                                                    keep_head=False, dtype_mm=config.model.dtype),
                           num_classes=num_classes)
    models = build_models(config, tokenizer, num_classes=num_classes)
    if init.format == "scratch":
        return models, None
    if init.format in ("pretrained", "hf_clip"):
        if init.format == "pretrained":
            clip_model, params = shipped_clip(config)
        else:
            clip_model, params = convert.from_hf_clip(init.path, image_size=data.image_size,
                                                      dtype_mm=config.model.dtype)
        clip_model, params = with_memory_levers(config.model, clip_model, params)
        image = dict(clip_model.image, proj_dim=clip_model.out_dim)
        return {"clip": clip_model,
                "classifier": models["classifier"].clone(img=image)}, params
    if init.format == "orbax":
        manager = checkpoint.Checkpointer(init.path)
        step = manager.latest_step()
        if step is None:
            raise ValueError(f"init.path={init.path!r} holds no complete orbax checkpoint; give "
                             "a stage directory of an earlier run, e.g. workdir/pretrain.")
        images = jnp.zeros((1, data.image_size, data.image_size, 3), jnp.float32)
        tokens = jnp.zeros((1, config.tokenizer.context_length), jnp.int32)
        shapes = nn.unbox(jax.eval_shape(models["clip"].init, jax.random.key(0), images,
                                         tokens)["params"])
        replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = manager.restore_params(step, checkpoint.restore_target(
            shapes, jax.tree.map(lambda _: replicated, shapes)))
        manager.close()
        return models, params
    raise ValueError(f"init.format={init.format!r} is not read by wlsft_jax.main; start from "
                     "'scratch', 'pretrained', 'orbax', 'hf_clip', 'hf_vit' or 'big_vision'.")


def vision_only(vit_model, params, *, num_classes: int):
    """(models, params) of a pretrained image tower: the classifier in its architecture, the
    params as `{"img": ...}`."""
    return ({"classifier": classifier.Model(img=module_fields(vit_model), num_classes=num_classes)},
            {"img": params})


def shipped_clip(config):
    """(CLIP model, params) of the shipped model init.name, checked against the world's caption
    grammar and the config's context length."""
    name = config.init.name
    fields, params = pretrained.read(name)
    if fields["vocabulary"] != list(world.VOCABULARY):
        raise ValueError(f"init.name={name!r} was trained on another caption grammar than "
                         f"data/world.py's; {pretrained.rebuild_hint(name)}.")
    variant = config.model.img.get("variant")
    if variant != fields["image"].get("variant"):
        raise ValueError(f"model.img.variant={variant!r}, but init.name={name!r} is "
                         f"{fields['image'].get('variant')!r}; remove the override.")
    if fields["context_length"] != config.tokenizer.context_length:
        raise ValueError(f"init.name={name!r} reads {fields['context_length']} tokens, "
                         f"tokenizer.context_length is {config.tokenizer.context_length}; "
                         "remove the override.")
    return pretrained.model_of(name, fields), params


def with_memory_levers(model_config, clip_model, params):
    """A converted checkpoint's CLIP with `model.img` / `model.txt`'s scan and remat_policy, its
    params stacked for the towers that scan (the converters give the looped layout)."""
    towers = {}
    for key, field in (("img", "image"), ("txt", "text")):
        levers = {lever: model_config[key][lever] for lever in MEMORY_LEVERS
                  if lever in model_config[key]}
        towers[field] = dict(getattr(clip_model, field), **levers)
        if levers.get("scan"):
            params = {**params, key: vit_params.stack_layers(params[key])}
    return clip_model.clone(**towers), params


def module_fields(module: nn.Module, drop=("proj_dim", "num_classes")) -> dict:
    """A model's configuration fields as a dict, without `drop` (WLS sets projection itself)."""
    return {field.name: getattr(module, field.name) for field in dataclasses.fields(module)
            if field.name not in ("parent", "name", *drop)}
