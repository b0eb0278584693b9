"""The resumable record of finished evaluations, shared by the main run and the sweep.

A cell is one (method, alpha, dataset, seed) scored by one evaluator; its records (one per metric)
join `<directory>/results.json` as soon as it is evaluated, and a rerun skips the cells found
there. Evaluators record different metrics, so a cell's metrics tell whose records they are.
Cells that raised go to `failures.json`. Each write replaces a file through a temporary one, so
it is always whole; only process 0 writes and every process reads, so all skip the same cells.
"""
from __future__ import annotations

import json

import jax
from etils import epath

from wlsft_jax import records as records_lib, storage

RESULTS = "results.json"
FAILURES = "failures.json"


def cell_key(record) -> tuple[str, float, str, int]:
    """(method, alpha, dataset, seed): the cell a record belongs to."""
    return record["method"], record["alpha"], record["dataset"], record["seed"]


def write_json(path: epath.Path, value) -> None:
    """`value` as JSON at `path`, whole or not at all (process 0 only): through a temporary
    file on a disk; directly on gs://, where an object upload is already atomic (and a rename
    is a copy)."""
    if jax.process_index() != 0:
        return
    text = json.dumps(value, indent=1)
    if storage.is_remote(path):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


class Ledger:
    """The finished cells' records in `<directory>/results.json` and the failed cells."""

    def __init__(self, directory: epath.Path):
        self.results_path = directory / RESULTS
        self.failures_path = directory / FAILURES
        self.records = (records_lib.load_records(self.results_path)
                        if self.results_path.exists() else [])
        self.failures = []
        self._finished = {(cell_key(r), r["metric"]) for r in self.records}

    def done(self, key: tuple[str, float, str, int], metrics) -> bool:
        """Whether cell `key` has a record of one of `metrics` (an evaluator's)."""
        return any((key, metric) in self._finished for metric in metrics)

    def add(self, records) -> None:
        self.records = records_lib.merge_records(self.records, records)
        self._finished.update((cell_key(r), r["metric"]) for r in records)
        write_json(self.results_path, self.records)

    def cached(self, keys, metrics, evaluate) -> list[dict]:
        """The records of `metrics` (an evaluator's) of the cells `keys`: from the ledger when
        all are finished, else those `evaluate()` returns, added to the ledger."""
        if all(self.done(key, metrics) for key in keys):
            wanted = set(keys)
            return [r for r in self.records if cell_key(r) in wanted and r["metric"] in metrics]
        records = evaluate()
        self.add(records)
        return records

    def fail(self, cell: dict, error: Exception) -> None:
        self.failures.append(dict(cell, error=f"{type(error).__name__}: {error}"))
        self.write_failures()

    def write_failures(self) -> None:
        write_json(self.failures_path, self.failures)
