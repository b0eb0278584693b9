"""The config check: every key known, every name valid, before anything is compiled or read.

`check_config` rejects any key that no part of the program consumes and any unknown name,
naming the valid ones. Method names, the stage keys a method alone reads and the method's own
checks come from the method registry (`wlsft_jax.methods`), not from lists kept here.
"""
from __future__ import annotations

import difflib

import ml_collections
from absl import logging

from wlsft_jax import evals, methods, optim
from wlsft_jax.data import tasks, templates

INIT_FORMATS = ("scratch", "pretrained", "orbax", "hf_clip", "hf_vit", "big_vision")
TOKENIZER_KINDS = ("world", "clip_bpe", "hf_json")

TOP_LEVEL_KEYS = {"seed", "num_seeds", "mesh", "distributed", "data", "tokenizer", "model",
                  "init", "stages", "eval", "evals", "text_encoder"}
SECTION_KEYS = {
    "mesh": {"data", "fsdp", "tensor"},
    "distributed": {"initialize", "coordinator_address", "num_processes", "process_id"},
    "data": {"source", "image_size", "id_domain", "ood_domains", "pretrain_domains",
             "pretrain_domain_weights", "train_examples_per_domain", "eval_examples_per_domain", "worker_count",
             "crop_scale", "flip", "mean", "std", "data_dir", "label_space", "captions",
             "captions_path", "caption_pairs"},
    "tokenizer": {"kind", "context_length", "vocab_path", "merges_path"},
    "model": {"img", "txt", "embed_dim", "dtype"},
    "init": {"format", "path", "name"},
    "eval": {"batch_size", "templates", "alphas", "report", "periodic_examples", "baseline"},
    "text_encoder": {"format", "path"},
}
# Keys every stage may set; a method's own keys are its module's STAGE_KEYS.
# A stage's `input` naming the weights of config.init rather than an earlier stage.
INITIAL_WEIGHTS = "init"
STAGE_KEYS = {"method", "input", "steps", "batch_size", "accum_steps", "optim", "templates",
              "log_every", "checkpoint_every", "keep_checkpoints", "eval_every"}


def missing_key(node, dotted: str, where: str = "config"):
    """(the first part of the dotted key path that `node` lacks, the section it was looked up
    in, that section's keys), or None when the whole path exists."""
    for key in dotted.split("."):
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        if key not in valid:
            return key, where, valid
        node, where = node[key], f"{where}.{key}"
    return None


def known_keys(keys, allowed, where) -> None:
    """ValueError naming the keys not in `allowed`, and the allowed ones."""
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown} in {where}; valid keys: "
                         f"{sorted(allowed)}.")


def choice(value, valid, what) -> None:
    """ValueError naming the valid choices when `value` is not one of them."""
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid choices: {list(valid)}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for any unknown key or unknown name, naming the valid ones."""
    stages = tuple(config.stages)
    if not stages:
        raise ValueError("config.stages is empty; name at least one stage, e.g. ('pretrain',).")
    sections = [key for key in config.keys() if hasattr(config[key], "keys")
                and "method" in config[key]]
    missing = [name for name in stages if name not in config]
    if missing:
        guesses = {name: difflib.get_close_matches(name, sections, n=1) for name in missing}
        hints = "; ".join(f"Did you mean {guess[0]!r} for {name!r}?"
                          for name, guess in guesses.items() if guess)
        raise ValueError(f"Stage(s) {missing} of config.stages={list(stages)} have no section "
                         f"in the config; its stage sections are {sections}. {hints}".strip())
    dropped = [name for name in sections if name not in stages]
    if dropped:  # E.g. --config.stages='("ft",)' --config.ft.input=init on an LP-FT config.
        logging.warning("Stage section(s) %s are not in config.stages=%s: not run.", dropped,
                        list(stages))
    known_keys(config.keys(), TOP_LEVEL_KEYS | set(stages) | set(dropped),
               f"the config's top level (stages {list(stages)} are valid too)")
    for section, allowed in SECTION_KEYS.items():
        if section in config:
            known_keys(config[section].keys(), allowed, f"config.{section}")
    choice(config.data.source, tasks.SOURCES, "data.source")
    choice(config.tokenizer.kind, TOKENIZER_KINDS, "tokenizer.kind")
    choice(config.init.format, INIT_FORMATS, "init.format")
    if "templates" in config.eval:
        choice(config.eval.templates, tuple(templates.TEMPLATES), "eval.templates")
    _check_init(config)
    for index, name in enumerate(stages):
        _check_stage(config, stages, index)
    _check_method_keys(config, stages)
    _check_evals(config, stages)
    if not methods.get(config[stages[0]].method).FROM_SCRATCH and config.init.format == "scratch":
        raise ValueError(f"The first stage {stages[0]!r} fine-tunes a pretrained model, but "
                         "init.format='scratch'; add a 'pretrain' stage first or set init.format "
                         f"to one of {list(INIT_FORMATS[1:])} with init.path.")


def _check_init(config) -> None:
    """`pretrained` names a model shipped in the package (init.name) of the kind the config
    trains (an image tower for a vision-only config, else a CLIP); every other format but
    `scratch` reads init.path."""
    from wlsft_jax import pretrained

    init = config.init
    name = init.get("name")
    if init.format == "pretrained":
        choice(name, tuple(pretrained.MODELS), "init.name (a shipped pretrained model)")
        if init.path:
            raise ValueError(f"init.path={init.path!r} is not read with init.format='pretrained' "
                             f"(init.name={name!r} is in the package); remove it.")
        kind = pretrained.MODELS[name].kind
        wanted = "clip" if "txt" in config.model else "vit"
        if kind != wanted:
            valid = [n for n, m in pretrained.MODELS.items() if m.kind == wanted]
            raise ValueError(f"init.name={name!r} is a {kind!r} model; this config needs a "
                             f"{wanted!r} model: one of {valid}.")
        return
    if name:
        raise ValueError(f"init.name={name!r} applies to init.format='pretrained' only; "
                         f"init.format is {init.format!r}: unset it with --config.init.name=")
    if init.format != "scratch" and not init.path:
        raise ValueError(f"init.format={init.format!r} needs init.path (a local or gs:// "
                         "path to the weights).")


def _check_stage(config, stages, index) -> None:
    """Stage `stages[index]`: its keys, method, input, templates, numbers and its method's own
    checks."""
    name = stages[index]
    stage = config[name]
    choice(stage.get("method"), methods.names(), f"method of stage {name!r}")
    method = methods.get(stage.method)
    own_keys = {key: other for other in methods.names()
                for key in methods.get(other).STAGE_KEYS}
    if not methods.trains_by_loop(stage.method):  # E.g. `lp`'s L-BFGS fit.
        known_keys(stage.keys(), {"method", "input", *method.STAGE_KEYS},
                   f"config.{name} (method {stage.method!r} runs no training loop)")
    known_keys(stage.keys(), STAGE_KEYS | set(own_keys), f"config.{name}")
    for key, owner in own_keys.items():
        if key in stage and key not in method.STAGE_KEYS:
            raise ValueError(f"config.{name}.{key} applies to method {owner!r} only; stage "
                             f"{name!r} has method {stage.method!r}.")
    if stage.get("input") is not None:
        choice(stage.input, (INITIAL_WEIGHTS, *stages[:index]),
               f"input of stage {name!r} (an earlier stage, or {INITIAL_WEIGHTS!r} for "
               "config.init's weights)")
    if "templates" in stage:
        choice(stage.templates, tuple(templates.TEMPLATES), f"templates of stage {name!r}")
    if methods.trains_by_loop(stage.method):
        _check_stage_numbers(name, stage)
    if "eval_every" in stage and not method.SCORED_BY:
        raise ValueError(f"config.{name}.eval_every: method {stage.method!r} is not scored by "
                         "any evaluator; remove it.")
    if hasattr(method, "check_config"):
        method.check_config(config, name)


def _check_method_keys(config, stages) -> None:
    """Keys that only one method reads (its module's CONFIG_KEYS, e.g. WLS's text encoder) need
    a stage of that method; so does a stand-in stage (`supervised`) the stage it feeds, and
    tokenizer.kind='hf_json' a text encoder."""
    used = {config[name].method for name in stages}
    for method_name in methods.names():
        method = methods.get(method_name)
        present = [key for key in getattr(method, "CONFIG_KEYS", ()) if _has_key(config, key)]
        if present and method_name not in used:
            raise ValueError(f"Config key(s) {present} apply to method {method_name!r} only; "
                             f"add a stage with method {method_name!r} or remove them.")
        feeds = getattr(method, "FEEDS", None)
        if method_name in used and feeds and feeds not in used:
            raise ValueError(f"Stage(s) {[n for n in stages if config[n].method == method_name]} "
                             f"of method {method_name!r} train the stand-in encoder of method "
                             f"{feeds!r}; add a {feeds!r} stage or remove them.")
    if config.tokenizer.kind == "hf_json" and "text_encoder" not in config:
        raise ValueError("tokenizer.kind='hf_json' reads the tokenizer.json of text_encoder.path; "
                         "set text_encoder (a 'wls' config) or another tokenizer.kind.")


def _has_key(config, dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        if parent not in config:
            return False
        config = config[parent]
    return leaf in config


def _check_evals(config, stages) -> None:
    """config.evals names evaluators of known types and settings (`wlsft_jax.evals`), each able
    to score every stage that is scored; eval.report is one of them (experiment.check_names
    checks their metrics against the datasets)."""
    if not hasattr(config.get("evals"), "keys") or not config.evals:
        raise ValueError("config.evals is unset or empty; name at least one evaluator, e.g. "
                         "evals.accuracy = dict(type='zero_shot').")
    for name, given in config.evals.items():
        if not hasattr(given, "keys"):
            raise ValueError(f"evals.{name}={given!r} must be a dict(type=..., settings).")
        choice(given.get("type"), evals.names(), f"type of evals.{name}")
        module = evals.get(given.type)
        known_keys(given.keys(), {"type", *module.SETTINGS}, f"config.evals.{name}")
        if hasattr(module, "check"):
            module.check(evals.settings(config, name), config, name)
    choice(config.eval.get("report"), tuple(config.evals), "eval.report (one of config.evals)")
    for stage in stages:
        scored_by = methods.get(config[stage].method).SCORED_BY
        for name, given in config.evals.items():
            if scored_by and given.type not in scored_by:
                raise ValueError(f"evals.{name} (type {given.type!r}) cannot score stage "
                                 f"{stage!r} (method {config[stage].method!r}), which is "
                                 f"scored by {list(scored_by)}; remove it or change its type.")


def _check_stage_numbers(name: str, stage: ml_collections.ConfigDict) -> None:
    """Step counts and batch split of a stage, and its optimizer config (keys, names, warmup)."""
    for key in ("steps", "batch_size", "accum_steps", "log_every", "checkpoint_every",
                "eval_every"):
        if key not in stage:  # eval_every is optional.
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
