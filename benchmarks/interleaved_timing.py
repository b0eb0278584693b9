"""Timing for benchmarks that compare contenders on a shared, possibly busy machine."""
import statistics
import time


def interleaved_medians(contenders, repeats, settle_seconds=0.0):
    """Median wall seconds of each `contenders[name]()` and its last result.

    Every contender runs once untimed (compilation, caches), then the contenders take turns for
    `repeats` rounds, so that load from other processes falls on all of them alike.
    `settle_seconds` of sleep before each timed run lets the previous contender's spinning worker
    threads (XLA, OpenMP) park, so that they do not steal cores from the next one.
    """
    results = {name: run() for name, run in contenders.items()}
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            time.sleep(settle_seconds)
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results
