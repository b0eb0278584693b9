"""Helpers the test files share: the repository root, a config as the command line builds it,
`wlsft_jax.main` run in the test process, tiny models' inputs and params, a training run's
metrics and checkpoints, and mock data (TFDS records, ObjectNet / WILDS / BREEDS folders, caption
datasets, a tiny CLIP BPE vocabulary, a tiny Hugging Face CLIP)."""
import functools
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver
from clu import metric_writers
from etils import epath
from ml_collections import config_flags
from PIL import Image
from tokenizers.pre_tokenizers import ByteLevel

from wlsft_jax import optim
from wlsft_jax.data import breeds, imagenet_classes, objectnet, tokenizer as tokenizer_lib
from wlsft_jax.data import wilds, world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path=os.path.join(REPO, "configs", "ft_clip.py"), *overrides):
    """The config of `path` as `--config=path --config.<key>=<value> ...` gives it."""
    argv = ["prog", f"--config={path}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def run_main_in_process(argv, monkeypatch):
    """`wlsft_jax.main` with `argv` in this process (8 CPU devices), flags and the mesh that
    main sets restored afterwards (a later test in this process may use another mesh)."""
    from wlsft_jax import main

    monkeypatch.setattr(sys, "argv", argv)  # The config flag reads its overrides from here.
    with flagsaver.flagsaver(), jax.set_mesh(None):
        try:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(argv)
            main.main(["main"])
        finally:
            flags.FLAGS.unparse_flags()
            flags.FLAGS.mark_as_parsed()


def random_params(model, *inputs, scale=0.1, seed=0):
    """Params of `model`'s shapes drawn with numpy: no per-shape compiles, every tensor nonzero."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.randn(*p.shape), jnp.float32),
                        nn.unbox(abstract))


def images(n=2, size=16, seed=0):
    """`n` random normal `size` x `size` RGB images."""
    return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


class RecordingWriter(metric_writers.MetricWriter):
    """Keeps every scalar written, `{step: {name: value}}`; with `path`, also appends JSON lines.

    `delay` seconds of sleep per write keep a subprocess's run long enough to kill it mid-way.
    """

    def __init__(self, path=None, delay=0.0):
        self.scalars, self._path, self._delay = {}, path, delay

    def write_scalars(self, step, scalars):
        self.scalars.setdefault(int(step), {}).update({k: float(v) for k, v in scalars.items()})
        if self._path:
            with open(self._path, "a") as f:
                f.write(json.dumps(dict(step=int(step), pid=os.getpid(),
                                        **{k: float(v) for k, v in scalars.items()})) + "\n")
        time.sleep(self._delay)

    def losses(self, name):
        return {step: s[f"{name}/loss"] for step, s in self.scalars.items()
                if f"{name}/loss" in s}

    # The loop writes only scalars; the other kinds are accepted and dropped.
    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


@functools.cache
def world_tokenizer():
    """The world vocabulary's tokenizer, 16 tokens long."""
    return tokenizer_lib.world_tokenizer(world.VOCABULARY, context_length=16)


def flat(tree):
    """{"/"-joined path: numpy array} of a pytree."""
    return {optim.param_path(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def saved_state(workdir, step):
    """The training state in the orbax checkpoint of `step`, as numpy arrays."""
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(epath.Path(workdir) / str(step) / "state")


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as free:
        free.bind(("localhost", 0))
        return free.getsockname()[1]


# Records per split of the mocked TFDS datasets.
NUM_MOCK_EXAMPLES = 6
# The ImageNet classes of the mocked ImageNet-R / -A records (TFDS labels are ImageNet ids).
SUBSET_IDS = {"imagenet_r": imagenet_classes.IMAGENET_R_CLASS_IDS,
              "imagenet_a": imagenet_classes.IMAGENET_A_CLASS_IDS}


def png_bytes(height=12, width=10, colour=(0, 200, 0), border=(255, 0, 0)) -> bytes:
    """A PNG of `colour` framed by a 2-pixel `border` (ObjectNet's red frame)."""
    image = np.full((height, width, 3), border, dtype=np.uint8)
    image[2:-2, 2:-2] = colour
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def mocked_tfds(data_dir, records=None):
    """tfds mocked over `data_dir`'s metadata: random records, or `records` (a list of dicts, or
    a function of the dataset's name giving one)."""
    fake = None if records is None else (lambda builder, split, **kwargs: (
        records(builder.name) if callable(records) else records))
    return tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES, data_dir=data_dir,
                                  policy=tfds.testing.MockPolicy.USE_FILES,
                                  as_data_source_fn=fake)


def write_objectnet(root, images_per_folder):
    """A tiny ObjectNet release: mapping files over a 5-line ImageNet label list (with a
    duplicated, unreferenced name, as the real list has "crane" twice) and PNG folders."""
    mappings = root / objectnet.OBJECTNET_DIR / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "thing": "Thing"}))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Banana": "banana", "Alarm clock": "analog clock; digital clock"}))
    # ILSVRC-2012 id -> our label id: 0->1, 1->2, 2->0, 3->3, 4->4.
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(
        {"0": 2, "1": 0, "2": 1, "3": 3, "4": 4}))
    (mappings / "imagenet_to_label_2012_v2").write_text(
        "analog clock\ndigital clock\nbanana\ncrane\ncrane\n")
    for folder, count in images_per_folder.items():
        (root / objectnet.OBJECTNET_DIR / "images" / folder).mkdir(parents=True)
        for i in range(count):
            (root / objectnet.OBJECTNET_DIR / "images" / folder / f"{i}.png").write_bytes(
                png_bytes())
    return mappings


def write_csv(path, header, rows):
    """A CSV file of `header` and `rows` (no quoting)."""
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, row)) for row in rows]))


def write_iwildcam(data_dir, rows):
    """An iWildCam folder in `data_dir`: metadata rows (split, filename, y), an image per row, and
    3 classes with WILDS's extra 99999 category."""
    root = data_dir / wilds.IWILDCAM_DIR
    (root / "train").mkdir(parents=True)
    for _, filename, _ in rows:
        (root / "train" / filename).write_bytes(png_bytes())
    write_csv(root / "metadata.csv", ("split", "filename", "y", "location_remapped"),
              [(*row, 7) for row in rows])
    write_csv(root / "categories.csv", ("y", "category_id", "name", "english"),
              [(0, 0, "empty", "Empty"), (1, 2, "tayassu pecari", "White-lipped peccary"),
               (2, 3, "dasyprocta punctata", "Central American agouti"), (99999, 9, "x", "X")])
    return root


def write_fmow(data_dir, rows):
    """An FMoW folder in `data_dir`: metadata rows (split, category, country, timestamp), an
    image per row, and the countries FRA, KEN, USA mapped to their regions."""
    root = data_dir / wilds.FMOW_DIR
    (root / "images").mkdir(parents=True)
    write_csv(root / "rgb_metadata.csv", ("split", "category", "country_code", "timestamp"), rows)
    write_csv(root / "country_code_mapping.csv", ("alpha-3", "region"),
              [("FRA", "Europe"), ("KEN", "Africa"), ("USA", "Americas")])
    for i in range(len(rows)):
        (root / "images" / f"rgb_img_{i}.png").write_bytes(png_bytes())
    return root


def write_breeds(data_dir, hierarchy, *, splits=("val",)):
    """A BREEDS hierarchy file for `hierarchy` (superclass i: source n<h>i0, targets n<h>i1 and
    n<h>i2) and an ImageNet folder with one image per class in each of `splits`."""
    num_superclasses = breeds.HIERARCHIES[hierarchy]
    prefix = f"n{list(breeds.HIERARCHIES).index(hierarchy)}"
    superclasses = [{"name": f"super{i}", "source": [f"{prefix}{i:03d}0"],
                     "target": [f"{prefix}{i:03d}1", f"{prefix}{i:03d}2"]}
                    for i in range(num_superclasses)]
    hierarchy_file = data_dir / breeds.BREEDS_DIR / f"{hierarchy}.json"
    hierarchy_file.parent.mkdir(exist_ok=True)
    hierarchy_file.write_text(json.dumps({"superclasses": superclasses}))
    for split in splits:
        for entry in superclasses:
            for wnid in entry["source"] + entry["target"]:
                (data_dir / breeds.IMAGENET_DIR / split / wnid).mkdir(parents=True)
                (data_dir / breeds.IMAGENET_DIR / split / wnid / "x.JPEG").write_bytes(
                    png_bytes())
    return hierarchy_file


def encoded_image(value: int, image_format: str = "PNG", size=(8, 6)) -> bytes:
    """A uniform grey image of `value`, encoded."""
    image = Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def write_tar_shard(path, samples):
    """A tar shard of `samples`: (member name, bytes)."""
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def write_coco(root, captions_per_image=(3, 2, 1)):
    """COCO's layout: annotations/captions_train2017.json and train2017/<file>.jpg."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images, annotations = [], []
    for image_id, count in enumerate(captions_per_image, start=7):
        file_name = f"{image_id:012d}.jpg"
        (root / "train2017" / file_name).write_bytes(encoded_image(20 * image_id, "JPEG"))
        images.append({"id": image_id, "file_name": file_name})
        annotations += [{"id": 100 * image_id + c, "image_id": image_id,
                         "caption": f"image {image_id} caption {c} "} for c in range(count)]
    file = root / "annotations" / "captions_train2017.json"
    file.write_text(json.dumps({"images": images, "annotations": annotations}))
    return file


# The words that the tiny CLIP BPE vocabulary has merges for.
BPE_WORDS = ("the", "photo", "of", "a", "cat", "dog", "it", "isn", "'s", "café")


def write_small_clip_files(directory):
    """Writes a tiny CLIP-format vocab.json/merges.txt: every byte symbol (bare and with </w>),
    the merges that spell BPE_WORDS, then start and end token last."""
    symbols = sorted(ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = []
    for word in BPE_WORDS:
        pieces = byte_symbols(word)
        pieces[-1] += "</w>"
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return directory / "vocab.json", directory / "merges.txt"


def byte_symbols(word):
    """The byte-level symbols (one per UTF-8 byte) that spell `word`."""
    return list(ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(word)[0][0])


# Why a test that needs PyTorch is skipped.
PARITY_EXTRA = "parity extra not installed: pip install -e .[parity]"


def save_hf_clip(tmp_path, image_size, patch_size, depth, act, text_length, eos, vocab_size=64):
    """Random-init tiny transformers.CLIPModel saved with save_pretrained; returns (model, dir)."""
    torch = pytest.importorskip("torch", reason=PARITY_EXTRA)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=depth, num_attention_heads=2,
                         max_position_embeddings=text_length, hidden_act=act, eos_token_id=eos,
                         bos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=depth,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                           hidden_act=act),
        projection_dim=24, logit_scale_init_value=3.0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # Non-trivial norms and class embedding, so the mapping is exercised.
        for name, param in model.named_parameters():
            if "norm" in name or "class_embedding" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(tmp_path)
    return model, str(tmp_path)


# The sweep's tiny setup (test_sweep.py, test_gcs.py): FLYP's config on 16-px images with a
# one-block text tower, scored on two datasets; the `runs` fixture (conftest.py) holds its
# checkpoints.
SWEEP_CONFIG = os.path.join(REPO, "configs", "flyp_clip.py")
SWEEP_TINY = ("--config.data.image_size=16", "--config.data.eval_examples_per_domain=16",
              "--config.data.worker_count=0", "--config.data.ood_domains=('sketch','painting')",
              "--config.eval.batch_size=16", "--config.model.txt.width=32",
              "--config.model.txt.depth=1", "--config.model.txt.num_heads=2",
              "--config.model.txt.mlp_dim=64", "--config.model.embed_dim=32")
SWEEP_DATASETS = ("photo", "sketch")


def race_for_a_dead_runs_lock(workdir: epath.Path, monkeypatch, starts: int = 8):
    """Writes a lock of a dead process of this host into `workdir`, lets `starts` threads call
    `workdir.acquire_lock` at once (each a holder of its own, told apart by its thread's name);
    returns (the holders that won, the names of those found the workdir busy)."""
    from wlsft_jax import workdir as workdir_lib

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workdir / workdir_lib.LOCK).write_text(
        json.dumps(dict(host=socket.gethostname(), pid=dead.pid, started="long ago")))
    holder = workdir_lib._holder
    monkeypatch.setattr(workdir_lib, "_holder",
                        lambda: dict(holder(), started=threading.current_thread().name))
    start, won, busy = threading.Barrier(starts), [], []

    def take_over():
        start.wait()
        try:
            won.append(workdir_lib.acquire_lock(workdir))
        except workdir_lib.WorkdirBusyError:
            busy.append(threading.current_thread().name)

    threads = [threading.Thread(target=take_over, name=f"start {i}") for i in range(starts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won, busy
