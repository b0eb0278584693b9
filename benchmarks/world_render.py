"""Rendering speed of the embedded world, alone and through grain's DataLoader.

    python benchmarks/world_render.py [--image-size 32 --examples 3000 --repeats 5 --workers 2]

Rows: `world.example` per domain in this process; a `WorldSource` mixing all domains read in a
loop (the baseline); and grain DataLoaders (batch 128, shuffled) with 0 and `--workers` worker
processes, each with grain's default read threads and with one (rendering holds the GIL, so
extra threads only add overhead), timed after their first batch so that starting the workers is
not counted. Prints the median images/s over the repeats (wall clock, and per CPU-second of this
process where that means something: CPU time does not count waiting for a shared core), and the
ratio to the baseline. Training consumes roughly 300-1000 images/s.
"""
import argparse
import statistics
import time

from absl import flags
import grain
import numpy as np

from wlsft_jax.data import world

BATCH_SIZE = 128


def median_rate(render, count, repeats):
    """Median images per wall-second and per CPU-second of `render()`, which makes `count`."""
    render()  # Warm-up: SDF tables and caches.
    wall_rates, cpu_rates = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        render()
        wall_rates.append(count / (time.perf_counter() - wall))
        cpu_rates.append(count / (time.process_time() - cpu))
    return statistics.median(wall_rates), statistics.median(cpu_rates)


def render_examples(domain, count, image_size):
    def render():
        for index in range(count):
            world.example(index, domain=domain, image_size=image_size)
    return render


def read_source(source, count):
    def render():
        for key in range(count):
            source[key]
    return render


def loader_rate(source, count, workers, read_options, repeats):
    """Median images per wall-second of a shuffled, batched grain DataLoader after its first
    batch."""
    batches = count // BATCH_SIZE
    rates = []
    for repeat in range(repeats):
        loader = grain.DataLoader(
            data_source=source,
            sampler=grain.samplers.IndexSampler(len(source), shuffle=True, num_epochs=1,
                                                seed=repeat,
                                                shard_options=grain.sharding.NoSharding()),
            operations=[grain.transforms.Batch(batch_size=BATCH_SIZE, drop_remainder=True)],
            worker_count=workers,
            read_options=read_options)
        iterator = iter(loader)
        next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(iterator)
        assert batch["image"].shape == (BATCH_SIZE, source.image_size, source.image_size, 3)
        rates.append(batches * BATCH_SIZE / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; keep their defaults.

    rows = []
    for domain in world.DOMAINS:
        wall, cpu = median_rate(render_examples(domain, args.examples, args.image_size),
                                args.examples, args.repeats)
        rows.append((f"world.example, domain={domain}", wall, cpu))
    source = world.WorldSource(split="train", domains=world.DOMAINS,
                               examples_per_domain=4 * args.examples,
                               image_size=args.image_size)
    baseline_wall, baseline_cpu = median_rate(read_source(source, args.examples), args.examples,
                                              args.repeats)
    rows.append(("WorldSource[i], all domains (baseline)", baseline_wall, baseline_cpu))
    for workers in (0, args.workers):
        for read_threads in (grain.ReadOptions().num_threads, 1):
            # With workers the parent process only collects batches; its CPU time says nothing.
            rate = loader_rate(source, args.examples + BATCH_SIZE, workers,
                               grain.ReadOptions(num_threads=read_threads), args.repeats)
            rows.append((f"grain.DataLoader, worker_count={workers}, read threads {read_threads}",
                         rate, None))

    print(f"image_size={args.image_size}, {args.examples} images per repeat, median of "
          f"{args.repeats} repeats, numpy {np.__version__}, grain {grain.__version__}")
    print(f"{'what':52s} {'images/s':>10s} {'per CPU-s':>10s} {'vs baseline':>12s}")
    for name, wall, cpu in rows:
        cpu_text = "-" if cpu is None else f"{cpu:.0f}"
        print(f"{name:52s} {wall:10.0f} {cpu_text:>10s} {wall / baseline_wall:11.2f}x")


if __name__ == "__main__":
    main()
