"""Named pretrained models shipped inside the package, as open_clip's `pretrained=` names.

    model, params, tokenizer = wlsft_jax.pretrained.load("world_clip")
    zimg, ztxt, out = model.apply({"params": params}, images_nhwc, tokens)

- `world_clip`: the tiny CLIP (two towers) pretrained contrastively on the embedded world's
  captions (`configs/pretrain_clip.py:long`); `tokenizer` is the world's word-level tokenizer.
- A "vit" kind (an image tower: `model` is a `vit.Model`, `features, out = model.apply(...)`,
  DINO's k-NN reads `out["encoded"][:, 0]`; `tokenizer` is None) is what `world_dino`, the
  DINO stand-in trained by `configs/pretrain_dino.py`, will be once a run of it is exported
  (not shipped yet: README, "Pretrained world models").

Each file is an `.npz` of the params flattened to "/"-joined names (the layout big_vision's npz
checkpoints use, with our parameter names) plus the model's fields as JSON under `__model__`;
its sha256 is checked on every load. Rebuild one with its config, then
`python -m wlsft_jax.model_cards export NAME --workdir=WORKDIR` (prints the new sha256), and
measure its model card with `python -m wlsft_jax.model_cards card NAME`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from flax import traverse_util

from wlsft_jax.data import tokenizer as tokenizer_lib
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
    "world_clip": Named(file="world_clip.npz",
                        sha256="dbbcd274493fe8da5608ecb6d3a3aff1c500c060b8fbcde0e462a642e8120859",
                        kind="clip",
                        config="configs/pretrain_clip.py:long", stage="pretrain"),
    "world_dino": Named(file="world_dino.npz",
                        sha256="90a6dae6b00e16b4e5990c109fec5bba8e2c19242477ada35ccc11608654d862",
                        kind="vit",
                        config="configs/pretrain_dino.py", stage="dino"),
}


def named(name: str) -> Named:
    """The shipped model `name`, or a ValueError listing the valid names."""
    if name not in MODELS:
        raise ValueError(f"Unknown pretrained model {name!r}; valid names: {sorted(MODELS)}.")
    return MODELS[name]


def rebuild_hint(name: str) -> str:
    model = named(name)
    return (f"rebuild it with `python -m wlsft_jax.main --config={model.config} "
            f"--workdir=WORKDIR` then `python -m wlsft_jax.model_cards export {name} "
            f"--workdir=WORKDIR`")


def read(name: str) -> tuple[dict, dict]:
    """(model fields, params) of `name`, its file checked against the recorded sha256."""
    model = named(name)
    path = DIRECTORY / model.file
    if not path.exists():
        raise FileNotFoundError(f"Pretrained model {name!r}: {path} is missing; "
                                f"{rebuild_hint(name)}.")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise ValueError(f"Pretrained model {name!r}: {path} has sha256 {digest}, expected "
                         f"{model.sha256} (damaged or replaced); {rebuild_hint(name)}.")
    with np.load(io.BytesIO(data)) as arrays:
        fields = json.loads(str(arrays[MODEL_KEY]))
        flat = {tuple(key.split("/")): arrays[key] for key in arrays.files if key != MODEL_KEY}
    return fields, traverse_util.unflatten_dict(flat)


def model_of(name: str, fields: dict):
    """The Flax model of the shipped model `name` from its stored `fields` (`read`)."""
    if named(name).kind == "vit":
        return vit.Model(**fields)
    return two_towers.Model(image=fields["image"], text=fields["text"], out_dim=fields["out_dim"])


def load(name: str):
    """(model, params, tokenizer) of the shipped model `name` (see the module docstring)."""
    fields, params = read(name)
    tokenizer = None if named(name).kind == "vit" else tokenizer_lib.world_tokenizer(
        tuple(fields["vocabulary"]), context_length=fields["context_length"])
    return model_of(name, fields), params, tokenizer


def save(path, params: dict, fields: dict) -> str:
    """Writes `params` and the model `fields` as a shipped-model npz; returns its sha256."""
    params = jax.device_get(nn.unbox(params))
    flat = {"/".join(key): np.asarray(value)
            for key, value in traverse_util.flatten_dict(params).items()}
    buffer = io.BytesIO()
    np.savez(buffer, **flat, **{MODEL_KEY: np.array(json.dumps(fields, sort_keys=True))})
    epath.Path(path).write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()
