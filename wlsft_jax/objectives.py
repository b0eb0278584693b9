"""Training losses: softmax cross-entropy (FT, LP) and the CLIP contrastive loss (FLYP, WLS),
and the methods' losses of a model on a batch built on them.

Both are plain `jnp` functions of whole-batch arrays, so under `jax.jit` with a batch axis
sharded over devices GSPMD inserts the collectives (e.g. gathering the other towers' embeddings
for the similarity matrix); no explicit `psum`/`all_gather` is needed.

`mask` marks the valid rows of a padded batch (False rows are ignored entirely). Losses are
means over valid rows and are computed in float32 whatever the input dtype.
"""
import jax
import jax.numpy as jnp
import optax

# Logit for excluded (padded) candidates: finite, so gradients stay finite, yet exp() is 0.
_EXCLUDED_LOGIT = -1e9


def softmax_xent(logits, labels, mask=None):
    """Softmax cross-entropy with integer labels.

    Args:
      logits: float[B, C].
      labels: int[B], class indices.
      mask: optional bool[B], True for examples that count.

    Returns:
      (mean loss over valid examples, bool[B] per-example top-1 correct, False where masked).
    """
    logits = logits.astype(jnp.float32)
    valid = _valid_rows(mask, logits.shape[0])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels) & valid
    return _masked_mean(losses, valid), correct


def clip_contrastive(zimg, ztxt, temperature, mask=None):
    """Symmetric CLIP (InfoNCE) loss: row i of `zimg` pairs with row i of `ztxt`.

    Cross-entropy image->text over the rows of `temperature * zimg @ ztxt.T` and text->image
    over its columns, averaged. Every other row of the batch is a negative, including rows that
    share a class: FLYP, which feeds class-name prompts as the texts, does the same, so two
    images of one class in a batch push each other's prompt away.

    Args:
      zimg: float[B, D] image embeddings (normally L2-normalised).
      ztxt: float[B, D] text embeddings (normally L2-normalised).
      temperature: scalar logit multiplier, CLIP's `exp(logit_scale)` (not its inverse).
      mask: optional bool[B]; False rows are neither anchors nor negatives.

    Returns:
      (loss, metrics) with metrics "loss_i2t", "loss_t2i", "in_batch_retrieval_i2t" and
      "in_batch_retrieval_t2i": top-1 retrieval of the paired row within the batch, over valid
      rows (not classification accuracy: with 11 classes in a batch of 128, many captions
      match an image equally, so it stays low for a model that classifies well).
    """
    valid = _valid_rows(mask, zimg.shape[0])
    logits = temperature * jnp.einsum("id,td->it", zimg.astype(jnp.float32),
                                      ztxt.astype(jnp.float32))
    metrics = {}
    for direction, direction_logits in (("i2t", logits), ("t2i", logits.T)):
        direction_logits = jnp.where(valid[None, :], direction_logits, _EXCLUDED_LOGIT)
        log_probs = jax.nn.log_softmax(direction_logits)
        metrics[f"loss_{direction}"] = _masked_mean(-jnp.diagonal(log_probs), valid)
        matched = jnp.argmax(direction_logits, axis=-1) == jnp.arange(logits.shape[0])
        metrics[f"in_batch_retrieval_{direction}"] = _masked_mean(matched.astype(jnp.float32),
                                                                  valid)
    loss = (metrics["loss_i2t"] + metrics["loss_t2i"]) / 2
    return loss, metrics


def self_distillation(student_logits, teacher_logits, center, *, student_temperature,
                      teacher_temperature):
    """DINO's loss (Caron et al., 2021): cross-entropy between the centred, sharpened teacher on
    each global view and the student on every other view, averaged over those pairs.

    Args:
      student_logits: float[V, B, K], the student on every view (global views first).
      teacher_logits: float[G, B, K], the teacher on the G global views (no gradient).
      center: float[K], the running mean of the teacher's outputs.

    Returns:
      (loss, float[K] the batch's mean teacher output, for the center's update).
    """
    teacher = jax.nn.softmax((teacher_logits - center) / teacher_temperature, axis=-1)
    student = jax.nn.log_softmax(student_logits / student_temperature, axis=-1)
    # cross[g, v] = mean over the batch of -sum_k teacher[g] * log student[v].
    cross = -jnp.einsum("gbk,vbk->gv", teacher, student) / student.shape[1]
    pairs = 1.0 - jnp.eye(teacher.shape[0], student.shape[0])
    return jnp.sum(cross * pairs) / jnp.sum(pairs), jnp.mean(teacher_logits, axis=(0, 1))


def _valid_rows(mask, batch_size):
    return jnp.ones((batch_size,), bool) if mask is None else mask.astype(bool)


def _masked_mean(values, valid):
    """Mean of `values` over valid rows (0 when none is valid)."""
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def clip_loss(zimg, ztxt, temperature):
    """The CLIP contrastive loss and its metrics, the temperature included."""
    loss, metrics = clip_contrastive(zimg, ztxt, temperature)
    return loss, dict(metrics, temperature=temperature)


def contrastive_loss(model, params, batch, rng):
    """The CLIP loss of a two-tower `model` on a batch of images and tokens."""
    del rng  # No dropout or stochastic depth in these models.
    zimg, ztxt, out = model.apply({"params": params}, batch["image"], batch["tokens"])
    return clip_loss(zimg, ztxt, out["temperature"])


def classification_loss(model, params, batch, rng, label_key="label"):
    """Cross-entropy of an image classifier `model` on the batch's `label_key`."""
    del rng
    logits, _ = model.apply({"params": params}, batch["image"])
    loss, correct = softmax_xent(logits, batch[label_key])
    return loss, {"accuracy": jnp.mean(correct)}
