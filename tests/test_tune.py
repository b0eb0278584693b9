"""wlsft_jax.tune: hyperparameters chosen on the ID validation split, stage by stage."""
import json
import os
import subprocess
import sys

import pytest

from wlsft_jax import recipes, train, tune
from helpers import REPO, load

COMPARE = os.path.join(REPO, "configs", "compare_clip.py")


def test_parse_grid_reads_values_as_literals():
    grid = tune.parse_grid(["ft.optim.lr=1e-5,3e-5", "ft.steps=150,300",
                            "flyp.templates=simple,openai_imagenet"], load(COMPARE))
    assert grid == {"ft": {"optim.lr": [1e-5, 3e-5], "steps": [150, 300]},
                    "flyp": {"templates": ["simple", "openai_imagenet"]}}
    assert isinstance(grid["ft"]["steps"][0], int)


@pytest.mark.parametrize("spec,message", [
    ("fy.optim.lr=1e-5", r"Unknown stage in --grid='fy.optim.lr=1e-5' 'fy'; valid choices: "
                         r"\['lp', 'ft', 'lpft', 'flyp'\]"),
    ("ft.optim.lrr=1e-5", r"Unknown config key 'lrr' in config.ft.optim; valid keys: \[.*'lr'"),
    ("ft.optim.lr", "expected <stage>.<key>=<value>"),
    ("ft=1", "expected <stage>.<key>=<value>"),
])
def test_parse_grid_names_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        tune.parse_grid([spec], load(COMPARE))


def test_a_stage_without_an_evaluator_cannot_be_tuned():
    """A stand-in (method `supervised`) has no validation score to choose by."""
    config = recipes.base(stages=("stand_in",), stand_in=recipes.stage("supervised", steps=10))
    with pytest.raises(ValueError, match="has no evaluator to score it on the validation split"):
        tune.parse_grid(["stand_in.steps=10,20"], config)


def test_a_point_trains_its_stage_after_the_chosen_points_of_the_stages_it_starts_from():
    config = load(COMPARE)
    tuned = tune.point_config(config, "lpft", {"optim.lr": 1e-5},
                              chosen={"lp": {"max_iter": 7}, "ft": {"optim.lr": 1.0}})
    assert tuned.stages == ("lp", "lpft") and tuned.num_seeds == 1
    assert "ft" not in tuned and "flyp" not in tuned
    assert (tuned.lp.max_iter, tuned.lpft.optim.lr) == (7, 1e-5)
    assert tuned.lpft.eval_every == config.lpft.eval_every  # Its last step is always scored.
    assert config.lpft.optim.lr != 1e-5 and config.num_seeds == 3  # The config is untouched.


@pytest.mark.slow
def test_tuning_chooses_each_stage_on_validation_and_a_rerun_trains_nothing(tmp_path):
    """Two LP fits (1 and 100 L-BFGS steps) and one LP-FT point on a tiny world: the chosen LP
    is the one with the better validation score, LP-FT started from it, and a rerun only
    reads."""
    workdir = tmp_path / "tune"
    command = [sys.executable, os.path.join(REPO, "launch", "tune.py"), f"--config={COMPARE}",
               f"--workdir={workdir}", "--grid=lp.max_iter=1,100", "--grid=lpft.steps=4",
               "--config.lpft.batch_size=16",
               "--config.lpft.optim.warmup_steps=1", "--config.data.image_size=16",
               "--config.data.train_examples_per_domain=64",
               "--config.data.eval_examples_per_domain=32", "--config.eval.batch_size=32",
               "--config.model.img.variant=mu/8", "--config.data.worker_count=0"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((workdir / "tuning.json").read_text())
    lp = {p["point"]["max_iter"]: p["val"] for p in result["lp"]["points"]}
    assert result["lp"]["chosen"] == {"max_iter": max(lp, key=lp.get)}
    for point in result["lp"]["points"]:
        curve = train.read_eval_curve(os.path.join(point["workdir"], "lp"))
        assert curve[-1]["step"] == 1 and curve[-1]["val/photo"] == point["val"]
        assert "id/photo" not in curve[-1] and "ood/sketch" in curve[-1]
    chosen = result["lp"]["chosen"]["max_iter"]
    lpft_config = json.loads((workdir / "lpft" / "steps=4" / "config.json").read_text())
    assert lpft_config["lp"]["max_iter"] == chosen and lpft_config["stages"] == ["lp", "lpft"]
    assert first.stdout.strip().splitlines()[-1] == (
        f"--config.lp.max_iter={chosen} --config.lpft.steps=4")
    for point in result["lp"]["points"] + result["lpft"]["points"]:  # No test set is scored.
        assert not os.path.exists(os.path.join(point["workdir"], "report"))

    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((workdir / "tuning.json").read_text()) == result
    assert "the stage is finished" in again.stderr and "/eval/val/photo" not in again.stderr
