"""Input pipeline speed per CPU core: the real-data path against tf.data and a plain PIL loop.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--num_images 2000 --repeats 3 --batches 6
                                                      --batch_size 256 --workers 1 2]

Writes `--num_images` synthetic ImageNet-like JPEGs once into `--cache_dir` (quality 90, 60 %
500 x 375, 20 % 375 x 500, 20 % 300-800 px; a colour gradient, 1/f noise, blurred shapes and
fine noise, so they compress like photos rather than like flat noise), then reads them through:

- ours: the real-data path, a `FileListSource` (the folder datasets' source; TFDS sources hand
  over the same encoded bytes) and `pipeline.train_loader` / `pipeline.eval_batches` (grain,
  `--workers` worker processes) over the operations a real task builds (`tasks._augment` /
  `tasks._eval_view` of `recipes.real_data`, after `transforms.fuse_decode`), flip on; the same
  operations unfused (DecodeImage first: the code before the fused decode), 1 worker; and the
  fused operations in a plain loop in this process (their cost without grain's loader);
- tf.data in big_vision's style: `decode_and_crop_jpeg` of a `sample_distorted_bounding_box`
  (area in the crop scale, aspect 3/4-4/3, min_object_covered 0), bicubic resize without
  antialiasing (big_vision's default), random flip; eval: `decode_jpeg`, the shorter side
  resized to 224 (rounded), central crop; normalised and batched, on a private thread pool of
  1 and 2 threads; and once more with antialiasing (the filter ours and PIL use), 1 thread;
- a plain PIL loop as torchvision's transforms do it (RandomResizedCrop's sampling,
  `crop(box).resize(224, bicubic)`, mirror; eval Resize(224) + CenterCrop(224)), one process.

Views: train (RandomResizedCrop scale 0.08-1, bicubic, flip), train at FLYP's scale 0.9-1, and
eval (shorter side to 224 bicubic, central crop); all normalised to float32 batches of
`--batch_size`. A run starts a fresh iterator, waits for its first batch (worker start-up and
warm-up are not timed), then times `--batches` - 1 more batches: images per wall-second, CPU
seconds of this process and its worker processes over the same interval (psutil), and their
ratio, images per CPU-second ("per core": what one core delivers, less sensitive than wall time
to other jobs on the machine). Contenders alternate within each of `--repeats` rounds; medians.

Checks printed below the table: the crop-box distribution (area fraction and aspect-ratio
quantiles) of ours and of tf's sampler, fused vs unfused train views (same seeds), and the eval
views against the PIL reference (mean |difference| per image in [0, 255] units, ours within
`EVAL_TOLERANCE`). The last lines read `ratio <R>x vs tf.data (<view>)`, R being ours over
tf.data (not antialiased) in images per CPU-second, each at its best worker / thread count.
"""
import argparse
import gc
import itertools
import json
import math
import multiprocessing
import os
import random
import statistics
import time

from absl import flags
import numpy as np
import psutil
from PIL import Image, ImageDraw, ImageFilter

from wlsft_jax import recipes
from wlsft_jax.data import pipeline, tasks, transforms
from wlsft_jax.data.source_base import FileListSource

IMAGE_SIZE = 224
RATIO = (3 / 4, 4 / 3)
TRAIN, FLYP, EVAL = "train", "flyp", "eval"
SCALES = {TRAIN: (0.08, 1.0), FLYP: (0.9, 1.0)}
LABELS = {TRAIN: "train view", FLYP: "train view, FLYP scale", EVAL: "eval view"}
OURS, UNFUSED, OURS_LOOP, PIL_LOOP = ("ours", "ours unfused (before)", "ours' ops, plain loop",
                                     "PIL loop")
TF, TF_ANTIALIASED = "tf.data", "tf.data antialiased"
# Largest mean |ours - PIL reference| of one image's eval view, [0, 255] units: 0 where the
# JPEG is decoded at full size, about 1.3 where it is decoded reduced (DCT scaling keeps more
# of these images' pixel-level noise than a bicubic prefilter); tf.data's view differs by ~5.
EVAL_TOLERANCE = 2.0
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
CACHE_VERSION = 1  # Bump when the generator changes.


# ---------------------------------------------------------------------------------------------
# Synthetic photos.

def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8[height, width, 3]: a colour gradient, 1/f noise (amplitude ~ 1/frequency, as in
    photos; partly shared between channels), blurred ellipses and rectangles, and fine noise."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    frequency = np.hypot(fx, fy)
    frequency[0, 0] = 1.0

    def spectrum():
        return rng.standard_normal(frequency.shape) + 1j * rng.standard_normal(frequency.shape)

    shared = spectrum()
    channels = []
    for _ in range(3):
        noise = np.fft.irfft2((0.8 * shared + 0.45 * spectrum()) / frequency, s=(height, width))
        channels.append(noise / (noise.std() + 1e-8))
    noise = np.stack(channels, axis=-1)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    low, high = rng.uniform(30, 225, (2, 3))
    image = Image.fromarray(np.clip(low + (high - low) * gradient + 22 * noise, 0, 255)
                            .astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):
        left, top = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        box = [left, top, left + rng.uniform(0.1, 0.6) * width,
               top + rng.uniform(0.1, 0.6) * height]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return np.clip(np.asarray(image, np.float32) + 10 * noise, 0, 255).astype(np.uint8)


def image_shape(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): 60 % 375 x 500, 20 % 500 x 375, 20 % 300-800 px with aspect 0.6-1.7."""
    kind = rng.random()
    if kind < 0.6:
        return 375, 500
    if kind < 0.8:
        return 500, 375
    width = int(rng.integers(300, 801))
    return int(np.clip(width / rng.uniform(0.6, 1.7), 300, 800)), width


def _write_image(args):
    path, seed = args
    rng = np.random.default_rng(seed)
    Image.fromarray(natural_image(rng, *image_shape(rng))).save(path, format="JPEG", quality=90)


def cached_images(cache_dir: str, num_images: int) -> list[str]:
    """Paths of `num_images` JPEGs under cache_dir, written once (in parallel) and reused."""
    os.makedirs(cache_dir, exist_ok=True)
    paths = [os.path.join(cache_dir, f"{i:06d}.jpg") for i in range(num_images)]
    manifest = os.path.join(cache_dir, "manifest.json")
    done = {}
    if os.path.exists(manifest):
        with open(manifest) as file:
            done = json.load(file)
    if done.get("version") != CACHE_VERSION:
        done = {"version": CACHE_VERSION, "count": 0}
    missing = [(path, seed) for seed, path in enumerate(paths) if seed >= done["count"]]
    if missing:
        print(f"Writing {len(missing)} JPEGs to {cache_dir} ...", flush=True)
        with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
            pool.map(_write_image, missing, chunksize=16)
        with open(manifest, "w") as file:
            json.dump({"version": CACHE_VERSION, "count": max(num_images, done["count"])}, file)
    return paths


# ---------------------------------------------------------------------------------------------
# Contenders: each `make_*` returns a function that starts a fresh iterator of batches.

def file_source(paths) -> FileListSource:
    return FileListSource(name="synthetic", split="train", paths=paths, labels=[0] * len(paths))


class Cycled:
    """`length` records cycling over `source` (an eval pass longer than the set)."""

    def __init__(self, source, length):
        self._source, self._length = source, length

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        return self._source[index % len(self._source)]

    def __repr__(self):
        return f"Cycled({self._source!r}, length={self._length})"


def our_operations(view: str, fused: bool):
    """The operations a real task applies to an encoded image (tasks._real_task)."""
    data = recipes.real_data("imagenet", image_size=IMAGE_SIZE, flip=True,
                             crop_scale=SCALES.get(view, SCALES[FLYP]))
    view_operations = tasks._eval_view(data) if view == EVAL else tasks._augment(data)
    operations = (transforms.DecodeImage(), *view_operations)
    return transforms.fuse_decode(operations) if fused else operations


def make_ours(paths, view, workers, batch_size, batches, fused=True):
    """Starts `pipeline.train_loader` / `pipeline.eval_batches` over the real operations."""
    operations = our_operations(view, fused)

    def start():
        if view == EVAL:  # Two batches more than are read: the workers stay busy to the end.
            loader = pipeline.eval_batches(
                Cycled(file_source(paths), (batches + 2) * batch_size), batch_size=batch_size,
                operations=operations, worker_count=workers, shard_index=0, shard_count=1)
        else:
            loader = pipeline.train_loader(
                file_source(paths), global_batch_size=batch_size, operations=operations, seed=0,
                worker_count=workers, shard_index=0, shard_count=1)
        return (batch["image"] for batch in loader)
    return start


def make_ours_loop(paths, view, batch_size):
    """Our fused operations applied in a plain loop in this process, batched by np.stack:
    the transforms' own cost, without grain's reading threads, batching and worker IPC."""
    operations = our_operations(view, fused=True)

    def start():
        def batches_of_images():
            for b in itertools.count():
                images = []
                for i in range(b * batch_size, (b + 1) * batch_size):
                    element = {"image": open(paths[i % len(paths)], "rb").read(),
                               "label": np.int32(0), pipeline.MASK_KEY: np.bool_(True)}
                    rng = np.random.default_rng(i)
                    for op in operations:
                        element = (op.random_map(element, rng) if hasattr(op, "random_map")
                                   else op.map(element))
                    images.append(element["image"])
                yield np.stack(images)
        return batches_of_images()
    return start


def _tf():
    """TensorFlow, imported on first use (grain's spawned workers import this module)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")
    return tf


def tf_train_fn(tf, scale, antialias=False):
    """big_vision's decode_jpeg_and_inception_crop(224, bicubic) + flip_lr, as one map."""
    def decode_crop(encoded):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.io.extract_jpeg_shape(encoded), tf.zeros([0, 0, 4], tf.float32),
            area_range=scale, aspect_ratio_range=RATIO, min_object_covered=0,
            use_image_if_no_bounding_boxes=True, max_attempts=10)
        top, left, _ = tf.unstack(begin)
        height, width, _ = tf.unstack(size)
        image = tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, left, height, width]),
                                              channels=3)
        image = tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE), method="bicubic",
                                antialias=antialias)
        return tf.image.random_flip_left_right(image)
    return decode_crop


def tf_eval_fn(tf, antialias=False):
    """big_vision's decode + resize_small(224, bicubic) + central_crop(224), as floats."""
    def decode_resize_crop(encoded):
        image = tf.io.decode_jpeg(encoded, channels=3)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        new_shape = tf.cast(tf.round(shape * IMAGE_SIZE / tf.reduce_min(shape)), tf.int32)
        image = tf.image.resize(image, new_shape, method="bicubic", antialias=antialias)
        top = (new_shape[0] - IMAGE_SIZE) // 2
        left = (new_shape[1] - IMAGE_SIZE) // 2
        return image[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
    return decode_resize_crop


def make_tf(paths, view, threads, batch_size, antialias=False):
    """Starts the tf.data pipeline on a private pool of `threads` threads."""
    tf = _tf()
    mean, std = (np.asarray(v, np.float32) * 255 for v in transforms.MEAN_STD["clip"])
    view_fn = (tf_eval_fn(tf, antialias) if view == EVAL
               else tf_train_fn(tf, SCALES[view], antialias))

    def start():
        files = tf.data.Dataset.from_tensor_slices(paths)
        if view != EVAL:
            files = files.shuffle(len(paths), seed=0)
        files = files.repeat()
        dataset = files.map(lambda path: (view_fn(tf.io.read_file(path)) - mean) / std,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        dataset = dataset.batch(batch_size).prefetch(1)
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        options.autotune.cpu_budget = threads
        return dataset.with_options(options).as_numpy_iterator()
    return start


def torchvision_box(height, width, scale, rng: random.Random):
    """torchvision's RandomResizedCrop.get_params with Python's random: (left, top, right,
    bottom)."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = rng.randint(0, height - crop_height)
            left = rng.randint(0, width - crop_width)
            return left, top, left + crop_width, top + crop_height
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        crop_width, crop_height = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        crop_width, crop_height = int(round(height * RATIO[1])), height
    else:
        crop_width, crop_height = width, height
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return left, top, left + crop_width, top + crop_height


def pil_eval_view(image: Image.Image) -> np.ndarray:
    """torchvision Resize(224, bicubic) + CenterCrop(224) of a decoded RGB image, uint8: the
    reference the eval views are compared with."""
    width, height = image.size
    if width <= height:
        size = (IMAGE_SIZE, int(IMAGE_SIZE * height / width))
    else:
        size = (int(IMAGE_SIZE * width / height), IMAGE_SIZE)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left = int(round((size[0] - IMAGE_SIZE) / 2.0))
    top = int(round((size[1] - IMAGE_SIZE) / 2.0))
    return np.asarray(resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)))


def make_pil_loop(paths, view, batch_size):
    mean, std = (np.asarray(v, np.float32) for v in transforms.MEAN_STD["clip"])

    def one_image(path, rng):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if view == EVAL:
                return pil_eval_view(image)
            box = torchvision_box(image.height, image.width, SCALES[view], rng)
            image = image.crop(box).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return np.asarray(image)

    def start():
        rng = random.Random(0)
        order = list(range(len(paths)))
        rng.shuffle(order)

        def batches_of_images():
            for b in itertools.count():
                images = [one_image(paths[order[(b * batch_size + i) % len(paths)]], rng)
                          for i in range(batch_size)]
                yield (np.asarray(images, np.float32) / 255.0 - mean) / std
        return batches_of_images()
    return start


# ---------------------------------------------------------------------------------------------
# Timing.

def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (grain workers)."""
    process = psutil.Process()
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def timed_run(start, batches):
    """(images, wall seconds, CPU seconds) of `batches` - 1 batches after the first of a fresh
    iterator, the CPU time read while its workers still run."""
    iterator = start()
    first = next(iterator)
    assert first.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3) and first.dtype == np.float32
    images, wall, cpu = 0, time.perf_counter(), cpu_seconds()
    for _ in range(batches - 1):
        images += len(next(iterator))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    del iterator, first
    gc.collect()  # Ends grain's worker processes before the next contender starts.
    return images, wall, cpu


# ---------------------------------------------------------------------------------------------
# Agreement checks.

def crop_box_quantiles(sizes, scale, seed=0):
    """Area-fraction and aspect-ratio quantiles of ours (`RandomResizedCrop.crop_box`) and of
    tf's `stateless_sample_distorted_bounding_box`, one box per image size."""
    tf = _tf()
    crop = transforms.RandomResizedCrop(IMAGE_SIZE, scale=scale, resample="bicubic")
    ours, theirs = [], []
    for index, (height, width) in enumerate(sizes):
        left, top, right, bottom = crop.crop_box(height, width,
                                                 np.random.default_rng((seed, index)))
        ours.append(((right - left) * (bottom - top) / (height * width),
                     (right - left) / (bottom - top)))
        _, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [height, width, 3], tf.zeros([1, 0, 4], tf.float32), seed=[seed, index],
            area_range=scale, aspect_ratio_range=RATIO, min_object_covered=0,
            use_image_if_no_bounding_boxes=True, max_attempts=10)
        box_height, box_width = int(size[0]), int(size[1])
        theirs.append((box_height * box_width / (height * width), box_width / box_height))
    return {name: np.quantile(np.asarray(boxes), QUANTILES, axis=0)
            for name, boxes in ((OURS, ours), (TF, theirs))}


def view_agreement(paths, count):
    """Per-image mean |a - b| of uint8 views ([0, 255] units) on the first `count` images:
    fused vs unfused train views at each scale (same seeds), and the eval views of ours,
    tf.data and tf.data antialiased vs the PIL reference; and which images ours decoded
    reduced (a JPEG reduction above 1 for the eval box)."""
    tf = _tf()
    tf_views = {TF: tf_eval_fn(tf), TF_ANTIALIASED: tf_eval_fn(tf, antialias=True)}
    center = transforms.ResizeCenterCrop(IMAGE_SIZE)
    decode = transforms.DecodeImage()
    differences = {name: [] for name in (*SCALES, OURS, *tf_views)}
    reduced = []
    for index, path in enumerate(paths[:count]):
        record = {"image": open(path, "rb").read()}
        for view, scale in SCALES.items():
            crop = transforms.RandomResizedCrop(IMAGE_SIZE, scale=scale, resample="bicubic")
            fused = crop.random_map(record, np.random.default_rng(index))["image"]
            unfused = crop.random_map(decode.map(record), np.random.default_rng(index))["image"]
            differences[view].append(np.abs(fused.astype(int) - unfused).mean())
        with Image.open(path) as image:
            reference = pil_eval_view(image.convert("RGB")).astype(int)
            left, top, right, bottom = center.box(image.height, image.width)
            reduced.append(transforms.jpeg_reduction(right - left, bottom - top, IMAGE_SIZE) > 1)
        differences[OURS].append(np.abs(center.map(record)["image"] - reference).mean())
        for name, view_fn in tf_views.items():
            theirs = np.clip(np.round(view_fn(tf.constant(record["image"])).numpy()), 0, 255)
            differences[name].append(np.abs(theirs - reference).mean())
    return {name: np.asarray(d) for name, d in differences.items()}, np.asarray(reduced)


# ---------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--cache_dir", default="/tmp/wlsft_jax_input_pipeline_jpegs")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=6,
                        help="batches per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="grain worker processes (ours) = tf.data threads")
    parser.add_argument("--check_images", type=int, default=200)
    parser.add_argument("--views", nargs="+", default=[TRAIN, FLYP, EVAL],
                        choices=[TRAIN, FLYP, EVAL])
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; keep their defaults.

    paths = cached_images(args.cache_dir, args.num_images)
    shapes = []
    for path in paths:
        with Image.open(path) as image:
            shapes.append((image.height, image.width))
    kilobytes = np.mean([os.path.getsize(p) for p in paths]) / 1e3
    load_before = os.getloadavg()

    contenders = {}  # (view, pipeline, parallelism) -> start
    for view in args.views:
        for workers in args.workers:
            contenders[view, OURS, workers] = make_ours(paths, view, workers, args.batch_size,
                                                        args.batches)
        contenders[view, UNFUSED, 1] = make_ours(paths, view, 1, args.batch_size, args.batches,
                                                 fused=False)
        contenders[view, OURS_LOOP, 0] = make_ours_loop(paths, view, args.batch_size)
        for threads in args.workers:
            contenders[view, TF, threads] = make_tf(paths, view, threads, args.batch_size)
        contenders[view, TF_ANTIALIASED, 1] = make_tf(paths, view, 1, args.batch_size,
                                                      antialias=True)
        contenders[view, PIL_LOOP, 1] = make_pil_loop(paths, view, args.batch_size)

    runs = {key: [] for key in contenders}
    loads = [load_before]
    for repeat in range(args.repeats):
        for key, start in contenders.items():
            runs[key].append(timed_run(start, args.batches))
        loads.append(os.getloadavg())
        print(f"repeat {repeat + 1}/{args.repeats} done, load average "
              f"{' '.join(f'{x:.2f}' for x in loads[-1])}", flush=True)

    per_core = {key: statistics.median(n / c for n, _, c in r) for key, r in runs.items()}
    wall = {key: statistics.median(n / w for n, w, _ in r) for key, r in runs.items()}
    busy = {key: statistics.median(c / w for _, w, c in r) for key, r in runs.items()}
    best_tf = {view: max(v for (v_, p, _), v in per_core.items() if v_ == view and p == TF)
               for view in args.views}

    height, width = np.mean(shapes, axis=0)
    print(f"\nInput pipeline: {args.num_images} synthetic JPEGs (mean {width:.0f} x {height:.0f} "
          f"px, {kilobytes:.0f} kB, quality 90) -> {IMAGE_SIZE} px float32 batches of "
          f"{args.batch_size}; {args.batches - 1} timed batches per run, median of "
          f"{args.repeats} interleaved repeats; {os.cpu_count()} CPUs; load average "
          f"(1/5/15 min) {' '.join(f'{x:.2f}' for x in loads[0])} before, "
          f"{' '.join(f'{x:.2f}' for x in loads[-1])} after")
    print(f"| {'view':22} | {'pipeline':21} | workers / threads | images/s | cores busy "
          f"| images/s per core | vs tf.data per core |")
    print(f"|{'-' * 24}|{'-' * 23}|-------------------|----------|------------|"
          f"-------------------|---------------------|")
    for (view, name, parallel), rate in per_core.items():
        print(f"| {LABELS[view]:22} | {name:21} | {parallel:17} "
              f"| {wall[view, name, parallel]:8.0f} "
              f"| {busy[view, name, parallel]:10.2f} | {rate:17.0f} "
              f"| {rate / best_tf[view]:18.2f}x |")

    train_views = [v for v in args.views if v != EVAL]
    if train_views:
        print("\nCrop boxes, one per image size, quantiles "
              + "/".join(f"{q:.0%}" for q in QUANTILES)
              + " (ours: torchvision's sampling, area and log-aspect uniform; tf: its own)")
    for view in train_views:
        quantiles = crop_box_quantiles(shapes, SCALES[view])
        for name, values in quantiles.items():
            area, aspect = values.T
            print(f"  scale {SCALES[view]} {name:8}: area fraction "
                  f"{' '.join(f'{a:.3f}' for a in area)}; aspect "
                  f"{' '.join(f'{a:.3f}' for a in aspect)}")
    differences, reduced = view_agreement(paths, args.check_images)
    print(f"Views of the first {len(reduced)} images, mean |difference| per image in [0, 255] "
          f"units (mean over images / largest):")
    for view in train_views:
        d = differences[view]
        print(f"  {LABELS[view]}, fused vs unfused (same seeds): {d.mean():.3f} / {d.max():.3f}, "
              f"bitwise equal on {np.mean(d == 0):.0%} of the images")
    d = differences[OURS]
    verdict = "within" if d.max() <= EVAL_TOLERANCE else "EXCEEDS"
    print(f"  eval view, ours vs PIL reference: {d.mean():.3f} / {d.max():.3f} ({verdict} the "
          f"tolerance {EVAL_TOLERANCE}); {d[~reduced].mean() if (~reduced).any() else 0:.3f} "
          f"on the {np.sum(~reduced)} images decoded at full size, "
          f"{d[reduced].mean() if reduced.any() else 0:.3f} on the {reduced.sum()} decoded "
          f"reduced")
    for name in (TF, TF_ANTIALIASED):
        print(f"  eval view, {name} vs PIL reference: {differences[name].mean():.3f} / "
              f"{differences[name].max():.3f}")
    for view in args.views:
        ours = max(v for (v_, p, _), v in per_core.items() if v_ == view and p == OURS)
        print(f"ratio {ours / best_tf[view]:.2f}x vs tf.data ({LABELS[view]})")


if __name__ == "__main__":
    main()
