"""Self-distillation with no labels (DINO, Caron et al. 2021) for the embedded world's stand-in
for a DINO ViT: multi-crop views made on the accelerator, the centred and sharpened teacher,
and the teacher's momentum update after every optimizer step.

The views are cut inside the jitted step from the batch's uint8 images (no extra host work):
`GLOBAL_VIEWS` random resized crops at the image size (scale GLOBAL_SCALE) and `LOCAL_VIEWS`
at half of it (LOCAL_SCALE), each flipped at random and colour-jittered (brightness, contrast,
saturation, a random channel order standing in for hue, grayscale). Colour is strong in the
world (8 object colours), so without colour jitter the views agree through colour alone.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

GLOBAL_VIEWS, LOCAL_VIEWS = 2, 4
GLOBAL_SCALE, LOCAL_SCALE = (0.35, 1.0), (0.1, 0.35)
# NumPy, not jax: importing this module must not start the XLA backend before a multi-host run
# calls jax.distributed.initialize().
CHANNEL_ORDERS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


@dataclasses.dataclass(frozen=True)
class Settings:
    """DINO's temperatures and momenta (its ViT-S defaults but the teacher momentum, and fewer
    prototypes for a tiny world)."""
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    center_momentum: float = 0.9
    # Rises to 1 along a cosine over the stage. DINO's 0.996 suits its 100+ epochs; a few
    # thousand steps need a teacher that follows faster.
    teacher_momentum: float = 0.99
    num_prototypes: int = 1024
    hidden_dim: int = 512
    bottleneck_dim: int = 128


def _crop_one(image, rng, out_size, scale):
    """A random resized crop of one float image [H, W, C] to out_size x out_size, maybe flipped."""
    size = image.shape[0]
    area_rng, ratio_rng, x_rng, y_rng, flip_rng = jax.random.split(rng, 5)
    area = jax.random.uniform(area_rng, (), minval=scale[0], maxval=scale[1]) * size * size
    log_ratio = jax.random.uniform(ratio_rng, (), minval=math.log(3 / 4), maxval=math.log(4 / 3))
    ratio = jnp.exp(log_ratio)
    width = jnp.clip(jnp.sqrt(area * ratio), 1.0, size)
    height = jnp.clip(jnp.sqrt(area / ratio), 1.0, size)
    left = jax.random.uniform(x_rng, ()) * (size - width)
    top = jax.random.uniform(y_rng, ()) * (size - height)
    zoom = jnp.array([out_size / height, out_size / width])
    crop = jax.image.scale_and_translate(
        image, (out_size, out_size, image.shape[-1]), (0, 1), zoom,
        -jnp.array([top, left]) * zoom, method="linear", antialias=True)
    return jnp.where(jax.random.bernoulli(flip_rng), crop[:, ::-1], crop)


def _jitter_one(image, rng):
    """Colour jitter of one image in [0, 1] (applied with probability 0.8), then grayscale with
    probability 0.2."""
    apply_rng, b_rng, c_rng, s_rng, order_rng, gray_rng = jax.random.split(rng, 6)
    grey = lambda x: jnp.mean(x, axis=-1, keepdims=True)
    jittered = image * jax.random.uniform(b_rng, (), minval=0.6, maxval=1.4)
    mean = jnp.mean(grey(jittered))
    jittered = mean + (jittered - mean) * jax.random.uniform(c_rng, (), minval=0.6, maxval=1.4)
    jittered = grey(jittered) + (jittered - grey(jittered)) * jax.random.uniform(
        s_rng, (), minval=0.6, maxval=1.4)
    jittered = jittered[..., jnp.asarray(CHANNEL_ORDERS)[jax.random.randint(order_rng, (), 0, 6)]]
    image = jnp.where(jax.random.bernoulli(apply_rng, 0.8), jittered, image)
    image = jnp.where(jax.random.bernoulli(gray_rng, 0.2),
                      jnp.broadcast_to(grey(image), image.shape), image)
    return jnp.clip(image, 0.0, 1.0)


def views(images_uint8, rng, *, mean, std):
    """The multi-crop views of a batch: a list of GLOBAL_VIEWS arrays [B, S, S, 3] then
    LOCAL_VIEWS arrays [B, S/2, S/2, 3], normalised with `mean` / `std`."""
    images = images_uint8.astype(jnp.float32) / 255.0
    size = images.shape[1]
    specs = [(size, GLOBAL_SCALE)] * GLOBAL_VIEWS + [(size // 2, LOCAL_SCALE)] * LOCAL_VIEWS
    out = []
    for index, (out_size, scale) in enumerate(specs):
        crop_rngs, jitter_rngs = jax.random.split(jax.random.fold_in(rng, index), (2,
                                                                                    images.shape[0]))
        view = jax.vmap(lambda image, r: _crop_one(image, r, out_size, scale))(images, crop_rngs)
        view = jax.vmap(_jitter_one)(view, jitter_rngs)
        out.append((view - jnp.asarray(mean)) / jnp.asarray(std))
    return out


def loss(student_logits, teacher_logits, center, settings: Settings):
    """DINO's cross-entropy between the centred, sharpened teacher on each global view and the
    student on every other view, averaged over pairs; returns (loss, the batch's mean teacher
    output, for the center's update)."""
    teacher = jax.nn.softmax((teacher_logits - center) / settings.teacher_temperature, axis=-1)
    student = jax.nn.log_softmax(student_logits / settings.student_temperature, axis=-1)
    # cross[g, v] = mean over the batch of -sum_k teacher[g] * log student[v].
    cross = -jnp.einsum("gbk,vbk->gv", teacher, student) / student.shape[1]
    pairs = 1.0 - jnp.eye(teacher.shape[0], student.shape[0])
    return jnp.sum(cross * pairs) / jnp.sum(pairs), jnp.mean(teacher_logits, axis=(0, 1))


def teacher_momentum(step, total_steps, settings: Settings):
    """DINO's cosine schedule from `settings.teacher_momentum` at step 0 to 1 at the end."""
    progress = jnp.minimum(step / jnp.maximum(total_steps, 1), 1.0)
    return 1.0 - (1.0 - settings.teacher_momentum) * (jnp.cos(jnp.pi * progress) + 1) / 2


def momentum_update(params, batch_center, step, total_steps, settings: Settings):
    """The teacher moves toward the student, the center toward the batch's teacher output."""
    momentum = teacher_momentum(step, total_steps, settings)
    teacher = jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s,
                           params["teacher"], params["student"])
    center = (settings.center_momentum * params["center"]
              + (1 - settings.center_momentum) * batch_center)
    return dict(params, teacher=teacher, center=center)
