"""wlsft_jax.testbed: the fixed effective-robustness line, fitted once, applied when it fits."""
import json
import math
import os
import subprocess
import sys

import pytest

from wlsft_jax import testbed
from helpers import REPO


def records(points):
    """One model per (name, ID, OOD a, OOD b) at alpha 1, seed 0."""
    return [dict(method=name, alpha=1.0, dataset=dataset, metric="top1", seed=0, value=value,
                 kind="id" if dataset == "photo" else "ood")
            for name, *values in points
            for dataset, value in zip(("photo", "sketch", "neon"), values)]


def logit(p):
    return math.log(p / (1 - p))


def test_fit_is_the_line_through_two_models_on_logit_axes():
    fitted = testbed.fit(records([("small", 0.5, 0.2, 0.4), ("large", 0.8, 0.4, 0.6)]),
                         id_dataset="photo")
    slope = (logit(0.5) - logit(0.3)) / (logit(0.8) - logit(0.5))
    assert fitted["ood_datasets"] == ["neon", "sketch"]
    assert fitted["slope"] == pytest.approx(slope)
    assert fitted["intercept"] == pytest.approx(logit(0.3) - slope * logit(0.5))
    assert [(p["model"], p["avg_ood"]) for p in fitted["points"]] == [
        ("large", pytest.approx(0.5)), ("small", pytest.approx(0.3))]


def test_launch_fits_and_a_report_of_the_same_sets_uses_it(tmp_path):
    results, out = tmp_path / "results.json", tmp_path / "mine.json"
    results.write_text(json.dumps(records([("a", 0.5, 0.2, 0.4), ("b", 0.8, 0.4, 0.6)])))
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch", "fit_testbed.py"),
                           f"--results={results}", f"--out={out}"], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("logit(avg OOD) = ")
    metrics = dict(metric="top1", ood_metric="top1")
    baseline, why_not = testbed.baseline(str(out), id_dataset="photo",
                                         ood_datasets=("sketch", "neon"), metrics=metrics)
    assert why_not == "" and baseline.line.predict(0.5) == pytest.approx(0.3)
    assert "testbed 'mine', 2 models trained on photo only" == baseline.description
    baseline, why_not = testbed.baseline(str(out), id_dataset="photo", ood_datasets=("sketch",),
                                         metrics=metrics)
    assert baseline is None and "this report ('photo', ['sketch']" in why_not


def test_an_unknown_testbed_names_the_shipped_ones():
    with pytest.raises(ValueError, match=r"Unknown testbed 'wrld'.*shipped: \['world'\]"):
        testbed.load("wrld")


@pytest.mark.slow
def test_the_world_testbed_config_trains_classifiers_from_scratch_and_fits(tmp_path):
    """configs/testbed_world.py's models start from random weights (ft from init 'scratch'),
    are scored at alpha 1 on ID and OOD, and launch/fit_testbed.py fits their line."""
    workdir = tmp_path / "testbed"
    budgets = {"scratch_250": 4, "scratch_500": 8, "scratch_1000": 2, "scratch_2000": 2}
    command = [sys.executable, "-m", "wlsft_jax.main",
               f"--config={os.path.join(REPO, 'configs', 'testbed_world.py')}",
               f"--workdir={workdir}", "--config.data.image_size=16",
               "--config.data.eval_examples_per_domain=32", "--config.eval.batch_size=32",
               "--config.data.train_examples_per_domain=64", "--config.data.worker_count=0"]
    for stage, steps in budgets.items():
        command += [f"--config.{stage}.steps={steps}", f"--config.{stage}.batch_size=16",
                    f"--config.{stage}.optim.warmup_steps=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((workdir / "report" / "results.json").read_text())
    assert {(r["method"], r["alpha"]) for r in results} == {(s, 1.0) for s in budgets}
    assert "zeroshot" not in {r["method"] for r in results}  # Nothing pretrained.
    out = tmp_path / "world.json"
    fitted = subprocess.run([sys.executable, os.path.join(REPO, "launch", "fit_testbed.py"),
                             f"--results={workdir / 'report' / 'results.json'}", f"--out={out}"],
                            capture_output=True, text=True, cwd=REPO)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert sorted(p["model"] for p in json.loads(out.read_text())["points"]) == sorted(budgets)


def test_a_misspelled_testbed_fails_before_anything_trains(tmp_path):
    """main stops at once, naming the shipped testbeds, instead of after training."""
    done = subprocess.run([sys.executable, "-m", "wlsft_jax.main",
                           f"--config={os.path.join(REPO, 'configs', 'flyp_clip.py')}",
                           f"--workdir={tmp_path / 'w'}", "--config.eval.baseline=wrld"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "Unknown testbed 'wrld'" in done.stderr and "shipped: ['world']" in done.stderr
    assert not (tmp_path / "w").exists()
