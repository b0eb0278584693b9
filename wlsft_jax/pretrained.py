"""Named pretrained models shipped inside the package, as open_clip's `pretrained=` names.

    model, params, tokenizer = wlsft_jax.pretrained.load("world_clip")
    zimg, ztxt, out = model.apply({"params": params}, images_nhwc, tokens)

- `world_clip`: the tiny CLIP (two towers) pretrained contrastively on the embedded world's
  captions (`configs/pretrain_clip.py:long`); `tokenizer` is the world's word-level tokenizer.
- `world_dino`: a ViT pretrained by DINO self-distillation on the world's images with no text
  and no labels (`configs/pretrain_dino.py`), the stand-in for DINO ViT-B/16; `model` is a
  `vit.Model` (`features, out = model.apply(...)`; DINO's k-NN reads `out["encoded"][:, 0]`)
  and `tokenizer` is None.

Each file is an `.npz` of the params flattened to "/"-joined names (the layout big_vision's npz
checkpoints use, with our parameter names) plus the model's fields as JSON under `__model__`;
its sha256 is checked on every load. Rebuild one with its `command`, then
`python -m wlsft_jax.pretrained export NAME --workdir=WORKDIR` (prints the new sha256).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from wlsft_jax.data import tokenizer as tokenizer_lib, world
from wlsft_jax.models import two_towers, vit

DIRECTORY = epath.Path(__file__).parent / "weights"
MODEL_KEY = "__model__"


@dataclasses.dataclass(frozen=True)
class Named:
    """A shipped model: its file, checksum, kind, and how it was made."""
    file: str
    sha256: str
    kind: str  # "clip" (two towers + world tokenizer) or "vit" (an image tower).
    config: str  # The config that trains it (its docstring holds the command and wall time).
    stage: str  # The stage of that config whose final params are exported.


MODELS = {
    "world_clip": Named(file="world_clip.npz", sha256="", kind="clip",
                        config="configs/pretrain_clip.py:long", stage="pretrain"),
    "world_dino": Named(file="world_dino.npz", sha256="", kind="vit",
                        config="configs/pretrain_dino.py", stage="dino"),
}


def _named(name: str) -> Named:
    if name not in MODELS:
        raise ValueError(f"Unknown pretrained model {name!r}; valid names: {sorted(MODELS)}.")
    return MODELS[name]


def rebuild_hint(name: str) -> str:
    named = _named(name)
    return (f"rebuild it with `python -m wlsft_jax.main --config={named.config} "
            f"--workdir=WORKDIR` then `python -m wlsft_jax.pretrained export {name} "
            f"--workdir=WORKDIR`")


def read(name: str) -> tuple[dict, dict]:
    """(model fields, params) of `name`, its file checked against the recorded sha256."""
    named = _named(name)
    path = DIRECTORY / named.file
    if not path.exists():
        raise FileNotFoundError(f"Pretrained model {name!r}: {path} is missing; "
                                f"{rebuild_hint(name)}.")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != named.sha256:
        raise ValueError(f"Pretrained model {name!r}: {path} has sha256 {digest}, expected "
                         f"{named.sha256} (damaged or replaced); {rebuild_hint(name)}.")
    with np.load(io.BytesIO(data)) as arrays:
        fields = json.loads(str(arrays[MODEL_KEY]))
        flat = {tuple(key.split("/")): arrays[key] for key in arrays.files if key != MODEL_KEY}
    return fields, traverse_util.unflatten_dict(flat)


def load(name: str):
    """(model, params, tokenizer) of the shipped model `name` (see the module docstring)."""
    fields, params = read(name)
    if _named(name).kind == "vit":
        return vit.Model(**fields), params, None
    tokenizer = tokenizer_lib.world_tokenizer(tuple(fields["vocabulary"]),
                                              context_length=fields["context_length"])
    model = two_towers.Model(image=fields["image"], text=fields["text"],
                             out_dim=fields["out_dim"])
    return model, params, tokenizer


def save(path, params: dict, fields: dict) -> str:
    """Writes `params` and the model `fields` as a shipped-model npz; returns its sha256."""
    flat = {"/".join(key): np.asarray(value)
            for key, value in traverse_util.flatten_dict(jax.device_get(params)).items()}
    buffer = io.BytesIO()
    np.savez(buffer, **flat, **{MODEL_KEY: np.array(json.dumps(fields, sort_keys=True))})
    epath.Path(path).write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def export(name: str, workdir: str, out: str | None = None) -> str:
    """Writes the final params of `name`'s stage in `workdir` (a run of its config) to the
    package's weights directory (or `out`); returns the file's sha256."""
    from wlsft_jax import checkpoint, experiment, methods
    from wlsft_jax.data import tasks

    named = _named(name)
    workdir = epath.Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    tokenizer = experiment.build_tokenizer(config, workdir)
    task = tasks.build(config.data, seed=config.seed)
    models = experiment.build_models(config, tokenizer, num_classes=len(task.class_names))
    stage = config[named.stage]
    method = methods.build(stage.method, stage_config=stage, config=config, tokenizer=tokenizer,
                           models=models, task=task, templates=())
    manager = checkpoint.Checkpointer(workdir / named.stage)
    step = manager.latest_step()
    if step != stage.steps:
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
        clip = models["clip"]
        fields = dict(image=dict(clip.image), text=dict(clip.text), out_dim=clip.out_dim,
                      context_length=tokenizer.context_length, vocabulary=list(world.VOCABULARY))
    return save(out or DIRECTORY / named.file, params, fields)


def main(argv) -> None:
    usage = "usage: python -m wlsft_jax.pretrained export NAME --workdir=WORKDIR [--out=FILE]"
    if len(argv) < 3 or argv[0] != "export" or not argv[2].startswith("--workdir="):
        raise SystemExit(usage)
    out = next((a.partition("=")[2] for a in argv[3:] if a.startswith("--out=")), None)
    digest = export(argv[1], argv[2].partition("=")[2], out)
    print(f"{argv[1]}: sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
