"""Tests for the robustness report: files, averages, effective robustness, seeds, merging."""
import csv
import glob
import json
import math
import random

import numpy as np
import pytest
from matplotlib import image

from wlsft_jax import plots, records as records_lib, report

ID = "photo"
OOD = ["sketch", "cartoon"]
# Per (method, alpha): accuracy on (photo, sketch, cartoon, painting) for seed 0; seed 1 adds 0.02.
ACCURACY = {
    ("FT", 0.0): (0.60, 0.40, 0.30, 0.10),
    ("FT", 0.5): (0.80, 0.55, 0.45, 0.20),
    ("FT", 1.0): (0.85, 0.45, 0.35, 0.15),
    ("FLYP", 0.0): (0.60, 0.40, 0.30, 0.10),
    ("FLYP", 0.5): (0.82, 0.60, 0.50, 0.25),
    ("FLYP", 1.0): (0.88, 0.50, 0.40, 0.20),
}
SEED_OFFSET = 0.02


def make_records(datasets=("photo", "sketch", "cartoon")):
    """2 methods x 3 alphas x the datasets x 2 seeds of top1 records."""
    columns = ("photo", "sketch", "cartoon", "painting")
    return [
        dict(method=method, alpha=alpha, dataset=dataset, metric="top1", seed=seed,
             value=ACCURACY[method, alpha][columns.index(dataset)] + SEED_OFFSET * seed,
             kind="id" if dataset == ID else "ood")
        for (method, alpha) in ACCURACY
        for dataset in datasets
        for seed in (0, 1)
    ]


def parse_table(table):
    """{(method, alpha): {column: cell}} from the Markdown table."""
    header, _, *lines = table.strip().splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in lines:
        cells = dict(zip(names, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["Method"], float(cells["α"])] = cells
    return rows


def logit(p):
    return math.log(p / (1 - p))


def test_write_report_writes_all_files(tmp_path):
    table = report.write_report(make_records(), str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "id_vs_ood.png", "report.md", "results.csv", "results.json",
    ]
    assert table in (tmp_path / "report.md").read_text()
    rows = parse_table(table)
    assert sorted(rows) == sorted(ACCURACY)
    assert list(rows["FT", 0.5]) == [
        "Method", "α", "ID: photo", "sketch", "cartoon", "Avg OOD (2)", "Eff. robustness",
    ]
    pixels = image.imread(tmp_path / "id_vs_ood.png")
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.std() > 0  # something was drawn


def test_json_and_csv_round_trip_in_stable_order(tmp_path):
    records = make_records()
    report.write_report(records, str(tmp_path / "a"), id_dataset=ID, ood_datasets=OOD)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    report.write_report(shuffled, str(tmp_path / "b"), id_dataset=ID, ood_datasets=OOD)
    for name in ("results.json", "results.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    loaded = records_lib.load_records(str(tmp_path / "a" / "results.json"))
    assert loaded == sorted(records, key=records_lib.record_key)
    with open(tmp_path / "a" / "results.csv") as f:
        from_csv = [records_lib.validate_record(row) for row in csv.DictReader(f)]
    assert from_csv == loaded


def test_average_ood_uses_exactly_the_listed_datasets(tmp_path):
    records = make_records(datasets=("photo", "sketch", "cartoon", "painting"))
    table = report.write_report(records, str(tmp_path), id_dataset=ID, ood_datasets=["sketch"])
    rows = parse_table(table)
    assert "cartoon" not in rows["FT", 1.0] and "painting" not in rows["FT", 1.0]
    # FT alpha=1: sketch 0.45 / 0.47 -> mean 46.0, sample std 1.4.
    assert rows["FT", 1.0]["Avg OOD (1)"] == rows["FT", 1.0]["sketch"] == "46.0 ± 1.4"
    assert "left out of the average: `cartoon`, `painting`" in (tmp_path / "report.md").read_text()

    table = report.write_report(records, str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    # FT alpha=1: mean over seeds of (sketch + cartoon) / 2 = (0.40 + 0.42) / 2.
    assert parse_table(table)["FT", 1.0]["Avg OOD (2)"] == "41.0 ± 1.4"


def test_ood_metric_tabulates_the_ood_columns_by_their_own_metric(tmp_path):
    """FMoW's report: top-1 ID, worst-region accuracy OOD (here top1 - 0.1 on every dataset)."""
    records = make_records(datasets=("photo", "sketch", "cartoon", "painting"))
    records += [dict(r, metric="worst_region_top1", value=r["value"] - 0.1) for r in records]
    metrics = dict(metric="top1", ood_metric="worst_region_top1")
    table = report.write_report(records, str(tmp_path), id_dataset=ID, ood_datasets=OOD,
                                **metrics)
    row = parse_table(table)["FT", 1.0]
    # FT alpha=1: photo 0.85 / 0.87 by top-1; sketch 0.35 / 0.37, cartoon 0.25 / 0.27 worst-region.
    assert row["ID: photo [top1]"] == "86.0 ± 1.4"
    assert (row["sketch"], row["cartoon"]) == ("36.0 ± 1.4", "26.0 ± 1.4")
    assert row["Avg OOD (2) [worst_region_top1]"] == "31.0 ± 1.4"
    markdown = (tmp_path / "report.md").read_text()
    assert "# Robustness report: top1 (ID), worst_region_top1 (OOD)" in markdown
    assert "left out of the average: `painting`" in markdown
    plots.plot_metric_vs_alpha(records, tmp_path / "alpha.png", id_dataset=ID, ood_datasets=OOD,
                                **metrics)
    assert image.imread(tmp_path / "alpha.png").std() > 0
    top1_only = [r for r in records if r["metric"] == "top1"]
    with pytest.raises(ValueError, match="No records for metric 'worst_region_top1'"):
        report.write_report(top1_only, str(tmp_path), id_dataset=ID, ood_datasets=OOD, **metrics)


def test_mean_and_std_over_seeds(tmp_path):
    seed_2 = [
        dict(r, seed=2, value=0.65 if r["dataset"] == ID else r["value"])
        for r in make_records()
        if (r["method"], r["alpha"], r["seed"]) == ("FT", 0.0, 0)
    ]  # FT alpha=0 on photo over seeds 0, 1, 2: 0.60, 0.62, 0.65
    records = make_records() + seed_2
    rows = parse_table(
        report.write_report(records, str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    )
    values = [0.60, 0.62, 0.65]
    expected = f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"
    assert rows["FT", 0.0]["ID: photo"] == expected == "62.3 ± 2.5"
    single_seed = [r for r in make_records() if r["seed"] == 0]
    rows = parse_table(
        report.write_report(single_seed, str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    )
    assert rows["FLYP", 0.5]["ID: photo"] == "82.0"


def read_scalars(log_dir):
    """{(step, tag): value} from the TensorBoard event files under log_dir."""
    tf = pytest.importorskip("tensorflow")
    scalars = {}
    for path in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars[event.step, value.tag] = float(tf.make_ndarray(value.tensor))
    return scalars


# A fixed testbed line: the models trained without robust pretraining (wlsft_jax.testbed).
TESTBED = records_lib.Baseline(records_lib.BaselineLine(slope=0.8, intercept=-0.9),
                          [("small", 0.5, 0.3), ("large", 0.9, 0.6)], "test testbed")


def test_effective_robustness_matches_hand_computation_and_tensorboard(tmp_path):
    metric_writers = pytest.importorskip("clu.metric_writers")
    writer = metric_writers.SummaryWriter(str(tmp_path / "tb"))
    table = report.write_report(
        make_records(), str(tmp_path), id_dataset=ID, ood_datasets=OOD, baseline=TESTBED,
        writer=writer,
    )
    writer.close()

    def predicted(id_accuracy):
        return 1 / (1 + math.exp(-(0.8 * logit(id_accuracy) - 0.9)))

    per_seed = [
        (0.55 + SEED_OFFSET * seed) - predicted(0.82 + SEED_OFFSET * seed) for seed in (0, 1)
    ]  # FLYP alpha=0.5, avg OOD (0.60 + 0.50) / 2
    rows = parse_table(table)
    expected = f"{100 * np.mean(per_seed):+.1f} ± {100 * np.std(per_seed, ddof=1):.1f}"
    assert rows["FLYP", 0.5]["Eff. robustness"] == expected
    markdown = (tmp_path / "report.md").read_text()
    assert "test testbed; logit(avg OOD) = 0.8000 · logit(ID) - 0.9000" in markdown

    scalars = read_scalars(tmp_path / "tb")
    assert scalars[50, "report/FLYP/effective_robustness/top1"] == pytest.approx(
        np.mean(per_seed), abs=1e-6
    )
    assert scalars[50, "report/FLYP/avg_ood/top1"] == pytest.approx(0.56, abs=1e-6)
    assert scalars[100, "report/FT/photo/top1"] == pytest.approx(0.86, abs=1e-6)
    assert scalars[0, "report/FT/sketch/top1"] == pytest.approx(0.41, abs=1e-6)
    assert {tag for _, tag in scalars} == {
        f"report/{method}/{column}/top1"
        for method in ("FT", "FLYP")
        for column in ("photo", "sketch", "cartoon", "avg_ood", "effective_robustness")
    }


def test_a_models_effective_robustness_does_not_change_when_others_join_the_report(tmp_path):
    """Against a fixed testbed line, FT's numbers depend on FT alone (the old line fitted
    through the report's own endpoints moved with every model added)."""
    ft_only = [r for r in make_records() if r["method"] == "FT"]
    alone = parse_table(report.write_report(ft_only, str(tmp_path / "a"), id_dataset=ID,
                                            ood_datasets=OOD, baseline=TESTBED))
    joined = parse_table(report.write_report(make_records(), str(tmp_path / "b"), id_dataset=ID,
                                             ood_datasets=OOD, baseline=TESTBED))
    for alpha in (0.0, 0.5, 1.0):
        assert alone["FT", alpha]["Eff. robustness"] == joined["FT", alpha]["Eff. robustness"]
    assert alone["FT", 0.0]["Eff. robustness"] != "+0.0 ± 0.0"  # Not zero by construction.


def test_effective_robustness_is_na_without_a_baseline(tmp_path):
    table = report.write_report(make_records(), str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    assert {row["Eff. robustness"] for row in parse_table(table).values()} == {"n/a"}
    assert "n/a: no testbed baseline" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "id_vs_ood.png").exists()


def test_a_baseline_line_needs_two_distinct_id_values():
    rows = records_lib.rows_of([r for r in make_records() if r["alpha"] == 0.0], id_dataset=ID,
                          ood_datasets=OOD)
    with pytest.raises(ValueError, match="at least two distinct ID values"):
        records_lib.fit_baseline_line(rows, ID)


def test_merge_records_dedups_newer_wins_and_sorts():
    old = make_records()
    newer = dict(old[0], value=0.99)
    extra = dict(old[0], seed=7)
    merged = records_lib.merge_records(old, [newer, extra])
    assert len(merged) == len(old) + 1
    by_key = {records_lib.record_key(r): r for r in merged}
    assert by_key[records_lib.record_key(newer)]["value"] == 0.99
    assert by_key[records_lib.record_key(extra)]["seed"] == 7
    assert merged == sorted(merged, key=records_lib.record_key)


BAD_RECORDS = [
    (lambda r: {k: v for k, v in r.items() if k != "seed"}, r"missing keys \['seed'\]"),
    (lambda r: dict(r, split="test"), r"unknown keys \['split'\].*exactly the keys"),
    (lambda r: dict(r, kind="test"), r"kind='test'; valid kinds: \['id', 'ood'\]"),
    (lambda r: dict(r, value=float("nan")), "non-finite value"),
    (lambda r: dict(r, value=float("inf")), "non-finite value"),
    (lambda r: dict(r, value="high"), "could not convert.*expected types"),
    (lambda r: dict(r, seed=1.5), "non-integer seed"),
]


@pytest.mark.parametrize("corrupt, message", BAD_RECORDS)
def test_bad_records_are_rejected(tmp_path, corrupt, message):
    records = make_records()
    records[0] = corrupt(records[0])
    with pytest.raises(ValueError, match=message):
        report.write_report(records, str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    with pytest.raises(ValueError, match=message):
        records_lib.merge_records([], records)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ood_datasets=["sketch", "imagenet-r"]),
         r"OOD dataset 'imagenet-r' has no records.*\['cartoon', 'photo', 'sketch'\]"),
        (dict(id_dataset="imagenet"), r"ID dataset 'imagenet' has no records"),
        (dict(ood_datasets=["photo"]), r"without the ID dataset 'photo'"),
        (dict(ood_datasets=[]), r"non-empty list"),
        (dict(metric="top5"), r"No records for metric 'top5'; metrics with records: \['top1'\]"),
    ],
)
def test_bad_report_arguments_are_rejected(tmp_path, kwargs, message):
    arguments = {"id_dataset": ID, "ood_datasets": OOD, **kwargs}
    with pytest.raises(ValueError, match=message):
        report.write_report(make_records(), str(tmp_path), **arguments)


def test_inconsistent_records_are_rejected(tmp_path):
    records = make_records()
    with pytest.raises(ValueError, match="share the key.*merge_records"):
        report.write_report(records + records[:1], str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    dropped = ("FT", 0.5, "cartoon", "top1", 1)
    missing_seed = [r for r in records if records_lib.record_key(r) != dropped]
    with pytest.raises(ValueError, match=r"FT at alpha=0.5 has no 'cartoon' record.*\[1\]"):
        report.write_report(missing_seed, str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    percentages = [dict(r, value=100 * r["value"]) for r in records]
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        report.write_report(percentages, str(tmp_path), id_dataset=ID, ood_datasets=OOD)
    wrong_kind = [dict(r, kind="id") if r["dataset"] == "sketch" else r for r in records]
    with pytest.raises(ValueError, match="'sketch' is reported as 'ood'.*kind"):
        report.write_report(wrong_kind, str(tmp_path), id_dataset=ID, ood_datasets=OOD)


def test_alphas_sharing_a_tensorboard_step_are_rejected(tmp_path):
    metric_writers = pytest.importorskip("clu.metric_writers")
    records = make_records() + [dict(r, alpha=0.501) for r in make_records() if r["alpha"] == 0.5]
    with pytest.raises(ValueError, match="two alphas at TensorBoard step 50"):
        report.write_report(
            records, str(tmp_path), id_dataset=ID, ood_datasets=OOD,
            writer=metric_writers.LoggingWriter(),
        )


def test_load_records_rejects_bad_files(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"method": "FT"}))
    with pytest.raises(ValueError, match="expected a list of records"):
        records_lib.load_records(str(path))
    path.write_text(json.dumps(make_records()[:1] * 2))
    with pytest.raises(ValueError, match="share the key"):
        records_lib.load_records(str(path))
