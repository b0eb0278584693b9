"""wlsft_jax.sweep and its command line launch/sweep.py: 2 checkpoints x 3 alphas x 2 datasets give 12 cells that match the main run's
WiSE-FT sweep; a sweep killed half-way completes only its missing cells on rerun; a failing cell
is reported while the others complete; bad input is an error naming the valid choices."""
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time

import jax
import orbax.checkpoint as ocp
import pytest

from wlsft_jax import (checkpoint, context as context_lib, experiment, records as records_lib,
                       sharding, sweep)
from wlsft_jax.evals import zero_shot
from helpers import (REPO, SWEEP_CONFIG as CONFIG, SWEEP_DATASETS as DATASETS, SWEEP_TINY as TINY,
                     load)

ALPHAS = (0.0, 0.5, 1.0)


def run_sweep(runs, out, checkpoints=("flyp", "ft"), alphas=ALPHAS, datasets=DATASETS):
    """The sweep in this process (8 CPU devices); returns its Outcome."""
    plan = sweep.plan(load(CONFIG, *TINY), checkpoints=[str(runs / c) for c in checkpoints],
                      alphas=alphas, datasets=datasets, pretrained=str(runs / "pretrain"))
    mesh = sharding.make_mesh(**plan.config.mesh)
    with jax.set_mesh(mesh):
        return sweep.run(plan, out=out, mesh=mesh)


def cells_of(records):
    return {(r["method"], r["alpha"], r["dataset"]) for r in records}


def values_of(records):
    return {(r["method"], r["alpha"], r["dataset"], r["metric"]): r["value"] for r in records}


ALL_CELLS = {(method, alpha, dataset) for method in ("flyp", "ft") for alpha in ALPHAS
             for dataset in DATASETS}


@pytest.fixture(scope="module")
def clean_sweep(runs, tmp_path_factory):
    """(outcome, results.json records) of one uninterrupted sweep of the 12 cells."""
    out = tmp_path_factory.mktemp("clean")
    outcome = run_sweep(runs, out)
    return outcome, json.loads((out / "results.json").read_text()), out


def test_a_sweep_evaluates_every_cell_once_and_writes_the_report(clean_sweep):
    outcome, records, out = clean_sweep
    assert {(c.method, c.alpha, c.dataset) for c in outcome.evaluated} == ALL_CELLS
    assert len(outcome.evaluated) == 12 and outcome.failures == []
    assert cells_of(records) == ALL_CELLS
    assert json.loads((out / "failures.json").read_text()) == []
    for name in ("report.md", "results.csv", "id_vs_ood.png", "top1_vs_alpha.png"):
        assert (out / "report" / name).exists(), name
    report = (out / "report" / "report.md").read_text()
    assert "| flyp | 0.5 |" in report and "| ft | 1 |" in report
    # alpha 0 is the pretrained CLIP with its zero-shot head, whichever checkpoint is mixed.
    values = values_of(records)
    for dataset in DATASETS:
        assert values["flyp", 0.0, dataset, "top1"] == values["ft", 0.0, dataset, "top1"]


def test_a_finished_sweep_reruns_without_evaluating(runs, clean_sweep):
    _, records, out = clean_sweep
    outcome = run_sweep(runs, out)
    assert outcome.evaluated == [] and outcome.failures == []
    assert json.loads((out / "results.json").read_text()) == records


def test_cells_match_the_main_runs_wise_ft_sweep(runs, clean_sweep, tmp_path):
    config = load(CONFIG, *TINY, f"--config.eval.alphas={ALPHAS}", "--config.init.format=orbax",
                  f"--config.init.path={runs / 'pretrain'}", "--config.init.name=")
    mesh = sharding.make_mesh(**config.mesh)
    context = context_lib.Context(config, workdir=tmp_path, mesh=mesh)
    evaluators = {"zero_shot": zero_shot.Evaluator(  # On photo and sketch.
        context, eval_sets=context.task.eval_sets[:2])}
    targets = sweep._restore_targets(config, context.models, context.tokenizer, mesh)
    records = []
    with jax.set_mesh(mesh):
        pretrained = jax.device_put(context.initial_params, sweep._shardings(targets["clip"]))
        # As the main run starts (and mixes) FLYP from the CLIP, FT from its zero-shot classifier.
        for name, theta0 in (("flyp", pretrained),
                             ("ft", zero_shot.as_classifier(pretrained, context.head_fn))):
            fine_tuned = sweep.load_checkpoint(str(runs / name), config, targets)
            records += experiment.wise_ft_records(config, evaluators, theta0, fine_tuned,
                                                  method=name, seed=config.seed)
    assert values_of(records) == values_of(clean_sweep[1])


def _start_sweep(runs, out, delay, log_path):
    """This file as a script: the sweep's command line, each cell slowed by `delay` seconds."""
    argv = [f"--config={CONFIG}", *TINY, f"--checkpoints={runs}/flyp,{runs}/ft",
            f"--alphas={','.join(map(str, ALPHAS))}", f"--datasets={','.join(DATASETS)}",
            f"--pretrained={runs / 'pretrain'}", f"--out={out}"]
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(delay), *argv],
                                cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=log,
                                stderr=log)


def _finished_cells(out):
    path = out / "results.json"
    return cells_of(json.loads(path.read_text())) if path.exists() else set()


@pytest.mark.slow
def test_a_sweep_killed_half_way_completes_only_the_missing_cells(runs, clean_sweep, tmp_path):
    out = tmp_path / "sweep"
    process = _start_sweep(runs, out, delay=1.0, log_path=tmp_path / "first.log")
    deadline = time.time() + 300
    while len(_finished_cells(out)) < 4:
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "fewer than 4 cells within 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = _finished_cells(out)
    assert 4 <= len(before) < 12, before

    outcome = run_sweep(runs, out)
    assert {(c.method, c.alpha, c.dataset) for c in outcome.evaluated} == ALL_CELLS - before
    assert outcome.failures == []
    records = json.loads((out / "results.json").read_text())
    assert values_of(records) == values_of(clean_sweep[1])
    assert (out / "report" / "report.md").exists()


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_complete(runs, tmp_path):
    broken = tmp_path / "broken"  # A stage directory whose run never saved a checkpoint.
    broken.mkdir()
    out = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "launch/sweep.py", f"--config={CONFIG}", *TINY,
         f"--checkpoints={runs}/flyp,{broken}", "--alphas=0,1", "--datasets=photo,sketch",
         f"--pretrained={runs / 'pretrain'}", f"--out={out}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    failures = json.loads((out / "failures.json").read_text())
    assert {(f["method"], f["alpha"], f["dataset"]) for f in failures} == {
        ("broken", alpha, dataset) for alpha in (0.0, 1.0) for dataset in DATASETS}
    assert all("holds no complete orbax checkpoint" in f["error"] for f in failures)
    assert cells_of(json.loads((out / "results.json").read_text())) == {
        ("flyp", alpha, dataset) for alpha in (0.0, 1.0) for dataset in DATASETS}
    assert (out / "report" / "report.md").exists()
    assert "4 cell(s) failed" in result.stderr


def test_seed_directories_are_seeds_of_one_report_row(runs, tmp_path):
    for seed in (0, 1):
        shutil.copytree(runs / "flyp", tmp_path / "w" / "flyp" / f"seed{seed}")
    out = tmp_path / "out"
    outcome = run_sweep(runs, out, checkpoints=[str(tmp_path / "w" / "flyp" / f"seed{seed}")
                                                for seed in (0, 1)], alphas=(0.0, 1.0))
    assert len(outcome.evaluated) == 8 and outcome.failures == []
    records = records_lib.load_records(out / "results.json")
    assert {(r["method"], r["seed"]) for r in records} == {("flyp", 0), ("flyp", 1)}
    assert "seeds per row: 2" in (out / "report" / "report.md").read_text()


def test_alpha_zero_is_evaluated_once_per_dataset(runs, clean_sweep, tmp_path, monkeypatch):
    """Alpha 0 is the pretrained model for every checkpoint: 2 datasets x (1 + 2 checkpoints x
    2 other alphas) evaluations for the 12 cells, with the clean sweep's values."""
    calls = []
    run = zero_shot.Evaluator.run

    def counting_run(self, *args, **kwargs):
        calls.append(kwargs["alpha"])
        return run(self, *args, **kwargs)

    monkeypatch.setattr(zero_shot.Evaluator, "run", counting_run)
    outcome = run_sweep(runs, tmp_path / "out")
    assert len(outcome.evaluated) == 12
    assert sorted(calls) == sorted([0.0] * 2 + [a for a in ALPHAS if a] * 4)
    assert values_of(records_lib.load_records(tmp_path / "out" / "results.json")) == values_of(
        clean_sweep[1])


def test_a_rerun_that_matches_more_checkpoints_keeps_their_names(runs, tmp_path):
    """Names depend on which paths a sweep holds; checkpoints.json keeps the first run's, so a
    rerun with one more 'flyp' neither renames nor re-evaluates the finished checkpoint."""
    shutil.copytree(runs / "flyp", tmp_path / "again" / "flyp")
    out = tmp_path / "out"
    first = run_sweep(runs, out, checkpoints=("flyp",), alphas=(0.0, 1.0))
    assert {cell.method for cell in first.evaluated} == {"flyp"}
    second = run_sweep(runs, out, checkpoints=("flyp", str(tmp_path / "again" / "flyp")),
                       alphas=(0.0, 1.0))
    assert {cell.method for cell in second.evaluated} == {"again/flyp"}
    assert json.loads((out / "checkpoints.json").read_text()) == {
        str(runs / "flyp"): "flyp", str(tmp_path / "again" / "flyp"): "again/flyp"}
    assert {r["method"] for r in records_lib.load_records(out / "results.json")} == {
        "flyp", "again/flyp"}


@pytest.mark.parametrize("inputs, message", [
    (dict(checkpoints=["{runs}/*/flyyp"]), r"No checkpoint directory matches '.*/\*/flyyp'; "),
    (dict(checkpoints=["{runs}/fylp"]), r"No checkpoint directory matches .*; .* holds "
                                        r"\['flyp', 'ft', 'pretrain'\]"),
    (dict(datasets=["photo", "mars"]), r"Unknown dataset\(s\) \['mars'\]; valid datasets of "
                                       r"this config: \['photo', 'sketch', 'painting'\]"),
    (dict(datasets=["sketch", "painting"]), r"needs the ID dataset 'photo'"),
    (dict(alphas=["0", "1.5"]), r"alpha 1.5 is outside \[0, 1\]"),
    (dict(alphas=["half"]), r"alpha 'half' is not a number"),
])
def test_bad_input_is_an_error_naming_the_valid_choices(runs, inputs, message):
    arguments = dict(checkpoints=["{runs}/flyp"], pretrained="{runs}/pretrain")
    arguments.update(inputs)
    arguments = {key: [v.format(runs=runs) for v in value] if isinstance(value, list)
                 else value and value.format(runs=runs) for key, value in arguments.items()}
    with pytest.raises(ValueError, match=message):
        sweep.plan(load(CONFIG, *TINY), **arguments)


def test_without_pretrained_alpha_0_is_the_configs_shipped_clip(runs):
    plan = sweep.plan(load(CONFIG), checkpoints=[str(runs / "flyp")])
    assert (plan.config.init.format, plan.config.init.name) == ("pretrained", "world_clip")
    with_pretrained = sweep.plan(load(CONFIG), checkpoints=[str(runs / "flyp")],
                                 pretrained=str(runs / "pretrain"))
    assert (with_pretrained.config.init.format, with_pretrained.config.init.name) == ("orbax",
                                                                                      None)


def test_a_checkpoint_fine_tuned_from_another_pretrained_model_is_refused(runs, tmp_path):
    restore = lambda name: ocp.StandardCheckpointer().restore(runs / name / "1" / "state")[
        "params"]
    pretrained, flyp = restore("pretrain"), restore("flyp")
    for name, started_from in (("mine", pretrained), ("other", flyp)):
        with checkpoint.Checkpointer(tmp_path / name) as manager:
            manager.save(1, {"params": flyp}, force=True, metadata=checkpoint.provenance(
                "flyp", f"orbax {name}", started_from))
    paths = [str(tmp_path / "mine"), str(tmp_path / "other"), str(runs / "flyp")]
    with pytest.raises(ValueError, match=r"1 checkpoint\(s\) were not fine-tuned from the "
                                         r"sweep's pretrained model 'orbax P'.*other \(started "
                                         r"from 'orbax other'.*--allow_other_pretrained"):
        checkpoint.check_provenance(paths, checkpoint.tree_sha256(pretrained["img"]), "orbax P")
    checkpoint.check_provenance(paths[:1], checkpoint.tree_sha256(pretrained["img"]), "orbax P")


def test_method_names_are_the_trailing_path_parts_that_differ(runs):
    assert sweep.method_names(["gs://b/runs/a/flyp", "gs://b/runs/b/flyp", "/x/ft"]) == {
        "gs://b/runs/a/flyp": "a/flyp", "gs://b/runs/b/flyp": "b/flyp", "/x/ft": "ft"}
    # The seed directories of one stage are seeds of one row.
    assert sweep.method_names(["/w/flyp/seed0", "/w/flyp/seed1", "/w/ft/seed0"]) == {
        "/w/flyp/seed0": "flyp", "/w/flyp/seed1": "flyp", "/w/ft/seed0": "ft"}
    assert sweep.split_seed("/w/flyp/seed12") == ("/w/flyp", 12)
    assert sweep.split_seed("/w/seed_bank") == ("/w/seed_bank", None)
    plan = sweep.plan(load(CONFIG, *TINY), checkpoints=[f"{runs}/f*", f"{runs}/flyp"],
                      pretrained=str(runs / "pretrain"))
    assert plan.methods == {f"{runs}/flyp": "flyp", f"{runs}/ft": "ft"}
    assert plan.alphas == tuple(round(0.1 * i, 1) for i in range(11))  # The config's.
    assert plan.datasets == ("photo", "sketch", "painting")


if __name__ == "__main__":  # The sweep's command line, each cell slowed by argv[1] seconds.
    delay, argv = float(sys.argv[1]), sys.argv[2:]
    run = zero_shot.Evaluator.run

    def slow_run(*args, **kwargs):
        time.sleep(delay)
        return run(*args, **kwargs)

    zero_shot.Evaluator.run = slow_run
    command_line = os.path.join(REPO, "launch", "sweep.py")
    sys.argv = [command_line, *argv]  # The config flag reads its overrides from here.
    runpy.run_path(command_line, run_name="__main__")
