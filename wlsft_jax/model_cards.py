"""Export a finished pretraining run as a shipped model, and measure a shipped model's card.

    python -m wlsft_jax.model_cards export world_clip --workdir=WORKDIR   # prints its sha256
    python -m wlsft_jax.model_cards card world_clip [--examples=1000]

The card is what README's model cards tabulate, per world domain, on the first `examples` test
images of each: zero-shot top-1 for a CLIP ("a photo of a {}.", WiSE-FT's simple head), and
weighted k-NN top-1 (k = 20, final-norm class token, DINO's protocol) for an image tower, with
the first CARD_BANK photo training images as the bank.
"""
from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from wlsft_jax import checkpoint, context as context_lib, methods, pretrained, recipes
from wlsft_jax.data import templates, world
from wlsft_jax.evals import knn, zero_shot
from wlsft_jax.models import classifier

CARD_BANK = 5_000
CARD_K = 20


def export(name: str, workdir: str, out: str | None = None) -> str:
    """Writes the final params of `name`'s stage in `workdir` (a run of its config) to the
    package's weights directory (or `out`); returns the file's sha256."""
    named = pretrained.named(name)
    workdir = epath.Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    context = context_lib.Context(config, workdir=workdir, mesh=None)
    stage = config[named.stage]
    method = methods.get(stage.method).build(context, named.stage, stage).spec
    manager = checkpoint.Checkpointer(workdir / named.stage)
    step = manager.latest_step()
    if step != stage.steps:
        manager.close()
        raise ValueError(f"{workdir / named.stage} holds step {step}, not the finished stage "
                         f"(step {stage.steps}); finish the run first.")
    shapes = nn.unbox(method.abstract_params())
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = manager.restore_params(step, checkpoint.restore_target(
        shapes, jax.tree.map(lambda _: device, shapes)))
    manager.close()
    if named.kind == "vit":
        params, fields = params["teacher"]["img"], dict(method.model.img)
    else:
        clip = context.models["clip"]
        fields = dict(image=dict(clip.image), text=dict(clip.text), out_dim=clip.out_dim,
                      context_length=context.tokenizer.context_length, vocabulary=list(world.VOCABULARY))
    return pretrained.save(out or pretrained.DIRECTORY / named.file, params, fields)


def _images(source, batch_size):
    """(normalised float32 images, labels) of every record of `source`, in batches."""
    data = recipes.world_data()
    mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
    for start in range(0, len(source), batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        images = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
        yield (images - mean) / std, np.array([r["label"] for r in records])


def card(name: str, *, examples: int = 1000, batch_size: int = 500) -> dict[str, float]:
    """{domain: top-1} of the shipped model `name` (see the module docstring)."""
    model, params, tokenizer = pretrained.load(name)
    is_clip = pretrained.named(name).kind == "clip"
    image_size = model.image["image_size"] if is_clip else model.image_size

    def source(split, domain, count):
        return world.WorldSource(split=split, domains=domain, examples_per_domain=count,
                                 image_size=image_size)

    if is_clip:
        tokens = jnp.asarray(zero_shot.class_prompt_tokens(
            tokenizer, world.CLASSES, templates.SIMPLE_TEMPLATES))
        head = zero_shot.zero_shot_head(model, params, tokens)
        image_classifier = classifier.Model(img=dict(model.image, proj_dim=model.out_dim),
                                            num_classes=len(world.CLASSES))
        predict = jax.jit(lambda images: jnp.argmax(image_classifier.apply(
            {"params": {"img": params["img"], "head": head}}, images)[0], axis=-1))
        return {domain: float(np.mean(np.concatenate([
            np.asarray(predict(images)) == labels
            for images, labels in _images(source("test", domain, examples), batch_size)])))
            for domain in world.DOMAINS}

    encode = jax.jit(lambda images: model.apply({"params": params}, images)[1]["encoded"][:, 0])

    def features(src):
        batches = [(np.asarray(encode(images)), labels)
                   for images, labels in _images(src, batch_size)]
        return np.concatenate([f for f, _ in batches]), np.concatenate([l for _, l in batches])

    bank, bank_labels = features(source("train", "photo", CARD_BANK))
    scores = {}
    for domain in world.DOMAINS:
        queries, labels = features(source("test", domain, examples))
        scores[domain] = knn.knn_accuracy(bank, bank_labels, queries, labels, ks=(CARD_K,),
                                          num_classes=len(world.CLASSES))[CARD_K]["top1"]
    return scores


def main(argv) -> None:
    usage = ("usage: python -m wlsft_jax.model_cards export NAME --workdir=WORKDIR [--out=FILE]\n"
             "       python -m wlsft_jax.model_cards card NAME [--examples=N]")
    if len(argv) < 2 or argv[0] not in ("export", "card"):
        raise SystemExit(usage)
    options = dict(a[2:].partition("=")[::2] for a in argv[2:] if a.startswith("--"))
    if argv[0] == "export":
        if "workdir" not in options:
            raise SystemExit(usage)
        print(f"{argv[1]}: sha256 {export(argv[1], options['workdir'], options.get('out'))}")
        return
    scores = card(argv[1], examples=int(options.get("examples", 1000)))
    other = [scores[d] for d in world.DOMAINS if d != "photo"]
    print(" | ".join(f"{d} {100 * v:.1f}" for d, v in scores.items())
          + f" | avg OOD {100 * np.mean(other):.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
