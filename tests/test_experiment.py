"""The one runner, through main: from the shipped world_clip, LP, FT, LP-FT and FLYP for two
seeds, each mixed with the pretrained CLIP across alphas and scored by every evaluator of the
config; a stage trained from scratch (DINO) scored as trained, and periodically while it
trains."""
import os

from wlsft_jax import records as records_lib, train
from wlsft_jax.evals import knn, linear_probe, zero_shot
from helpers import REPO, run_main_in_process

TINY = ["--config.data.image_size=16",
        "--config.data.train_examples_per_domain=48", "--config.data.eval_examples_per_domain=16",
        "--config.data.worker_count=0", "--config.data.ood_domains=('sketch',)",
        "--config.eval.alphas=(0.0,0.5,1.0)", "--config.eval.batch_size=16",
        "--config.num_seeds=2"]
STAGES = ("lp", "ft", "lpft", "flyp")
EVALUATORS = {"zero_shot": "top1", "knn": "knn20_top1", "linear_probe": "probe_top1"}


def test_every_stage_of_compare_clip_runs_through_the_one_runner(tmp_path, monkeypatch):
    """Every method is scored by every evaluator (zero-shot head, k-NN, linear probe), each in
    its own report; LP is the L-BFGS probe, fitted once per seed."""
    workdir = tmp_path / "workdir"
    overrides = [f"--config.{stage}.{key}={value}" for stage in STAGES[1:]
                 for key, value in (("steps", 2), ("batch_size", 16), ("log_every", 1),
                                    ("optim.warmup_steps", 1))]
    command = ["main", f"--config={os.path.join(REPO, 'configs', 'compare_clip.py')}"
               ":evals=zero_shot+knn+linear_probe", f"--workdir={workdir}", *TINY, *overrides]
    run_main_in_process(command, monkeypatch)
    records = records_lib.load_records(workdir / "report" / "results.json")
    for metric in EVALUATORS.values():
        rows = {(r["method"], r["seed"], r["alpha"]) for r in records if r["metric"] == metric}
        assert rows == {("zeroshot", 0, 0.0)} | {
            (method, seed, alpha) for method in STAGES for seed in (0, 1)
            for alpha in (0.0, 0.5, 1.0)}, metric
    for name, metric in EVALUATORS.items():
        report = workdir / "report" / ("" if name == "zero_shot" else name)
        assert f"# Robustness report: {metric}" in (report / "report.md").read_text()
        assert (report / f"{metric}_vs_alpha.png").exists()
    # Every fine-tuning stage trained per seed; LP's probe is one checkpoint, at step 1.
    assert all(sorted(os.listdir(workdir / stage)) == ["seed0", "seed1"] for stage in STAGES)
    assert [row["step"] for row in train.read_eval_curve(workdir / "lp" / "seed0")] == [1]
    # Alpha 0 is the pretrained CLIP for every stage, LP-FT included (mixed with the pretrained
    # model, not with its LP input), whatever was trained.
    values = {(r["method"], r["seed"], r["alpha"], r["dataset"], r["metric"]): r["value"]
              for r in records}
    for (method, seed, alpha, dataset, metric), value in values.items():
        if alpha == 0.0:
            assert value == values["zeroshot", 0, 0.0, dataset, metric], (method, seed)
    # The probe's head is not the zero-shot head it started from.
    assert any(values["lp", 0, 1.0, dataset, metric] != values["lp", 0, 0.0, dataset, metric]
               for dataset in ("photo", "sketch") for metric in ("top1", "top5"))

    # A rerun of the finished run trains nothing and evaluates nothing: every (method, alpha,
    # dataset, seed) cell of every evaluator is in the ledger (report/results.json), and the
    # report is the same.
    evaluated = []
    for module in (zero_shot, knn, linear_probe):
        monkeypatch.setattr(module.Evaluator, "run",
                            lambda self, *args, **kwargs: evaluated.append(kwargs) or [])
    run_main_in_process(command, monkeypatch)
    assert evaluated == []
    assert records_lib.load_records(workdir / "report" / "results.json") == records


def test_a_stage_trained_from_scratch_is_scored_as_trained_and_while_it_trains(tmp_path,
                                                                              monkeypatch):
    """configs/pretrain_dino.py: no reference model to mix with, so DINO's teacher is scored by
    its method's evaluator (k-NN) at alpha 1 only; eval_every scores it during training too."""
    workdir = tmp_path / "workdir"
    run_main_in_process(
        ["main", f"--config={os.path.join(REPO, 'configs', 'pretrain_dino.py')}",
         f"--workdir={workdir}", "--config.dino.steps=4", "--config.dino.batch_size=16",
         "--config.dino.eval_every=2", "--config.dino.optim.warmup_steps=1",
         "--config.data.image_size=16", "--config.data.train_examples_per_domain=48",
         "--config.data.eval_examples_per_domain=16", "--config.data.worker_count=0",
         "--config.eval.batch_size=16", "--config.evals.knn.ks=(1,10)",
         "--config.evals.knn.report_k=10", "--config.data.ood_domains=('sketch',)"],
        monkeypatch)
    records = records_lib.load_records(workdir / "report" / "results.json")
    assert {(r["method"], r["alpha"], r["dataset"], r["metric"]) for r in records} == {
        ("dino", 1.0, dataset, f"knn{k}_{name}") for dataset in ("photo", "sketch")
        for k in (1, 10) for name in ("top1", "top5")}
    events = "".join(path.read_bytes().decode("latin-1")
                     for path in (workdir / "tensorboard").iterdir())
    assert "dino/eval/val/photo" in events and "dino/eval/ood/sketch" in events
    curve = train.read_eval_curve(workdir / "dino")
    assert [row["step"] for row in curve] == [2, 4]
    assert all(set(row) == {"step", "val/photo", "ood/sketch"} for row in curve)
