"""Configs: every `configs/*.py` is valid; CLI overrides work; every unknown key or name, and
every batch split that cannot work, is a clear error before anything is compiled."""
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, load, run_main_in_process
from wlsft_jax import checks, experiment, recipes
from wlsft_jax.data import world

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def test_there_are_configs():
    assert {"ft_clip.py", "lp_clip.py", "flyp_clip.py"} <= set(map(os.path.basename,
                                                                   CONFIG_FILES))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_passes_the_checks(path):
    config = load(path)
    checks.check_config(config)
    experiment.check_names(config)


def test_an_override_changes_the_value():
    config = load(os.path.join(REPO, "configs", "ft_clip.py"), "--config.ft.optim.lr=0.125",
                  "--config.ft.batch_size=64", "--config.data.id_domain=sketch",
                  "--config.data.ood_domains=('photo',)")
    assert config.ft.optim.lr == 0.125
    assert config.ft.batch_size == 64
    assert config.data.id_domain == "sketch" and tuple(config.data.ood_domains) == ("photo",)
    assert load().ft.optim.lr == recipes.WORLD_CLIP_TUNED["ft"][0]
    checks.check_config(config)
    experiment.check_names(config)


def test_an_override_of_an_unknown_key_fails_naming_it():
    with pytest.raises(Exception, match="lr_decay"):
        load(os.path.join(REPO, "configs", "ft_clip.py"), "--config.ft.optim.lr_decay=0.5")


@pytest.mark.parametrize("where", [
    "", "mesh", "distributed", "data", "tokenizer", "model", "init", "eval", "ft",
])
def test_an_unknown_key_fails_naming_it_and_the_valid_keys(where):
    config = load()
    section = config[where] if where else config
    with section.unlocked():
        section.bogus_key = 1
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['bogus_key'\].*valid keys"):
        checks.check_config(config)


def test_an_unknown_optim_key_fails_naming_it_and_the_valid_keys():
    config = load()
    with config.unlocked():
        config.ft.optim.lr_decay = 0.5
    with pytest.raises(ValueError, match=r"config\.ft\.optim: .*\['lr_decay'\].*valid keys.*'wd'"):
        checks.check_config(config)


@pytest.mark.parametrize("key, value, message", [
    ("ft.method", "finetune", r"'finetune'; valid choices: \['dino', 'flyp', 'ft', 'lp', "
                              r"'pretrain', 'supervised', 'wls'\]"),
    ("ft.optim.optimizer", "adam", r"'adam'; valid optimizers: \('adamw', 'sgd'\)"),
    ("ft.optim.decay", "step", r"'step'; valid decays: \('cosine'"),
    ("ft.optim.schedule", [(".*", {"lr_mul": 2.0})],
     r"unknown settings \['lr_mul'\]; valid settings: \('lr_mult', 'wd_mult'\)"),
    ("ft.optim.warmup_steps", 1_000, "warmup_steps < total_steps"),
    ("ft.templates", "simple", r"config\.ft\.templates applies to method 'flyp' only"),
    ("tokenizer.kind", "bert", r"'bert'; valid choices: \['world', 'clip_bpe', 'hf_json'\]"),
    ("data.source", "laion", r"'laion'; valid choices: \['world', 'real'\]"),
    ("init.format", "pytorch", r"'pytorch'; valid choices: \['scratch', 'pretrained', 'orbax'"),
    ("eval.templates", "none", r"'none'; valid choices"),
])
def test_an_unknown_name_fails_listing_the_valid_ones(key, value, message):
    config = load()
    *parents, leaf = key.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    with config.unlocked():
        section[leaf] = value
    with pytest.raises(ValueError, match=message):
        checks.check_config(config)


def test_unknown_flyp_templates_fail_listing_the_valid_ones():
    config = load(os.path.join(REPO, "configs", "flyp_clip.py"), "--config.flyp.templates=fancy")
    with pytest.raises(ValueError, match=r"'fancy'; valid choices: \['openai_imagenet', "
                                         r"'simple', 'few', 'iwildcam', 'fmow'\]"):
        checks.check_config(config)


@pytest.mark.parametrize("key, value", [
    ("data.id_domain", "mars"), ("data.ood_domains", ("sketch", "mars")),
    ("data.pretrain_domains", ("mars",)),
])
def test_an_unknown_domain_fails_listing_the_valid_domains(key, value):
    value = value if isinstance(value, str) else repr(value)
    config = load(os.path.join(REPO, "configs", "ft_clip.py"), f"--config.{key}={value}")
    checks.check_config(config)
    with pytest.raises(ValueError, match=rf"\['mars'\] in {key}; valid domains.*"
                                         rf"{world.DOMAINS[0]!r}"):
        experiment.check_names(config)


def test_a_non_scratch_init_needs_a_path():
    config = load(os.path.join(REPO, "configs", "pretrain_clip.py"),
                  "--config.init.format=hf_clip")
    with pytest.raises(ValueError, match="init.format='hf_clip' needs init.path"):
        checks.check_config(config)


@pytest.mark.parametrize("method", ["flyp", "lp"])
def test_the_first_stage_needs_weights_unless_it_may_train_from_scratch(method):
    """FLYP and LP fine-tune a pretrained model; ft from scratch is a testbed model
    (configs/testbed_world.py), so it passes."""
    stage = recipes.lp_stage() if method == "lp" else recipes.stage(method, steps=100)
    config = recipes.base(stages=(method,), **{method: stage})
    with pytest.raises(ValueError, match="add a 'pretrain' stage first"):
        checks.check_config(config)
    checks.check_config(recipes.base(stages=("ft",), ft=recipes.stage("ft", steps=100)))


def test_a_stage_without_a_section_is_named():
    config = load(os.path.join(REPO, "configs", "ft_clip.py"),
                  "--config.stages=('ft', 'lp')")
    with pytest.raises(ValueError, match=r"\['lp'\] of config.stages=\['ft', 'lp'\] have no "
                                         r"section in the config; its stage sections are \['ft'\]"):
        checks.check_config(config)


def test_a_dropped_stage_is_not_run_and_the_next_one_starts_from_init(caplog):
    config = load(os.path.join(REPO, "configs", "lpft_clip.py"), "--config.stages=('lpft',)",
                  "--config.lpft.input=init")
    with caplog.at_level("WARNING"):
        checks.check_config(config)
    assert "Stage section(s) ['lp'] are not in config.stages=['lpft']: not run." in caplog.text


@pytest.mark.parametrize("key, value", [
    ("steps", 0), ("batch_size", -8), ("accum_steps", 0), ("log_every", 0),
    ("checkpoint_every", 0),
])
def test_stage_counts_must_be_positive_integers(key, value):
    config = load()
    with config.unlocked():
        config.ft[key] = value
    with pytest.raises(ValueError, match=rf"config\.ft\.{key} must be a positive integer"):
        checks.check_config(config)


def test_accum_steps_must_divide_the_batch_size():
    config = load(os.path.join(REPO, "configs", "ft_clip.py"), "--config.ft.accum_steps=3")
    with pytest.raises(ValueError, match=r"batch_size=128 does not split into accum_steps=3"):
        checks.check_config(config)


@pytest.mark.parametrize("overrides, message", [
    (["--config.ft.batch_size=12"], r"config\.ft: .*batch_size=12 / accum_steps=1: Global batch "
                                    r"size 12 is not divisible by the 8 data shards"),
    (["--config.ft.batch_size=32", "--config.ft.accum_steps=8"],
     r"config\.ft: .*accum_steps=8: Global batch size 4 is not divisible by the 8 data shards"),
    (["--config.mesh.data=3"], r"does not fit 8 devices.*valid axis sizes"),
])
def test_batch_and_mesh_errors_come_before_anything_runs(tmp_path, monkeypatch, overrides,
                                                         message):
    with pytest.raises(ValueError, match=message):
        run_main_in_process(["main", f"--config={REPO}/configs/ft_clip.py",
                             f"--workdir={tmp_path / 'workdir'}", *overrides], monkeypatch)
    assert not (tmp_path / "workdir").exists()


@pytest.mark.parametrize("override, message", [
    ("--config.ft.optim.optimizer=adam", r"Unknown optimizer 'adam'; valid optimizers"),
    ("--config.ft.optim.lr_decay=0.5", r"lr_decay"),
])
def test_main_fails_fast_on_a_bad_config(tmp_path, override, message):
    result = subprocess.run(
        [sys.executable, "-m", "wlsft_jax.main", f"--config={REPO}/configs/ft_clip.py",
         f"--workdir={tmp_path / 'workdir'}", override],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=120)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-3000:]
    assert not (tmp_path / "workdir").exists()  # Stopped before it made its workdir.
    assert "Stage" not in result.stderr  # ... and before any stage started.
