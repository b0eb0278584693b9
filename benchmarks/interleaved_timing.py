"""Timing for benchmarks that compare contenders on a shared, possibly busy machine."""
import statistics
import time


def interleaved_medians(contenders, repeats):
    """Median wall seconds of each `contenders[name]()` and its last result.

    Every contender runs once untimed (compilation, caches), then the contenders take turns for
    `repeats` rounds, so that load from other processes falls on all of them alike.
    """
    results = {name: run() for name, run in contenders.items()}
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results
