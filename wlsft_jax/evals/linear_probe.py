"""Linear probe: L2-regularised multinomial logistic regression on frozen features.

The objective is sklearn's `LogisticRegression` (lbfgs) scaled by 1/n:

    mean cross-entropy + ||kernel||² / (2 · C · n)        (the bias is not penalised)

fitted full-batch by optax's L-BFGS with its zoom line search inside one `lax.while_loop`. The
inverse regularisation strength C is a traced argument, so one compiled fit serves a whole
log-spaced grid; the grid is swept from strong to weak regularisation, each fit warm-started from
the previous solution, and C is chosen by accuracy on the validation split (never on test).
The result is a linear head, logits = feats @ kernel + bias: the `lp` stage's (LP-FT's first
stage), and the evaluator "linear_probe", which fits one on any stage's frozen features and
scores every eval set through it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from wlsft_jax.evals import features as features_lib
from wlsft_jax.evals.feature_checks import checked_features
from wlsft_jax.evals.feature_checks import checked_labels

# 10 values from strong (1e-4) to weak (1e2) regularisation, as in benchmarks/linear_probe.py.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 10))
# representation: the features probed (features_lib.REPRESENTATIONS), L2-normalised as the
# classifier's head and k-NN see them; cs: the grid C is chosen from on the ID validation split;
# max_iter: L-BFGS steps per C at most.
SETTINGS = dict(representation="features", cs=DEFAULT_CS, max_iter=1000)
METRICS = ("probe_top1", "probe_top5")


def report_metric(settings, kind: str) -> str:
    """The probe's top-1, for the ID and the OOD datasets alike."""
    del settings, kind
    return METRICS[0]


def recorded_metrics(settings, config, dataset: str) -> tuple[str, ...]:
    """probe_top1 and probe_top5 on every dataset."""
    del settings, config, dataset
    return METRICS


def check(settings, config, name) -> None:
    """A known representation, C values > 0, a positive step count."""
    del config
    features_lib.check_representation(settings["representation"], f"evals.{name}")
    check_grid(settings["cs"], settings["max_iter"])


class Evaluator:
    """probe_top1 / probe_top5 of a linear probe on the image features (representation) of a
    stage's `model`, fitted on its ID training images (`task.train_eval_set`) with C chosen on
    the ID validation split, on every eval set of `context.task` (or of `eval_sets`); a set
    with a logits transform (ImageNet-R / -A, ObjectNet) is scored on the transformed logits."""

    def __init__(self, context, model, settings, eval_sets=None):
        self.context, self.settings = context, settings
        self.eval_sets = context.task.eval_sets if eval_sets is None else tuple(eval_sets)
        self.features_fn = features_lib.image_features_fn(model, settings["representation"])

    def run(self, params, *, method, alpha, seed) -> list[dict]:
        """Report records of the probe on the `img` part of `params`, every eval set."""
        features = lambda eval_set: probe_features(self.features_fn, params["img"], eval_set,
                                                   self.context)
        kernel, bias, c = fit_on_task(features, self.context.task, cs=self.settings["cs"],
                                      max_iter=self.settings["max_iter"])
        records = []
        for eval_set in self.eval_sets:
            feats, labels = features(eval_set)
            logits = np.asarray(feats @ kernel + bias)
            if eval_set.logits_transform is not None:
                logits = eval_set.logits_transform(logits)
            best = np.argsort(-logits, axis=1, kind="stable")[:, :5] == labels[:, None]
            values = {"probe_top1": best[:, 0].mean(), "probe_top5": best.any(axis=1).mean()}
            records += [dict(method=method, alpha=float(alpha), dataset=eval_set.name,
                             metric=metric, seed=seed, value=float(value), kind=eval_set.kind)
                        for metric, value in values.items()]
        logging.info("probe_top1 of %s at alpha=%g (C=%.3g): %s", method, alpha, c, {
            r["dataset"]: round(r["value"], 4) for r in records if r["metric"] == METRICS[0]})
        return records


def probe_features(features_fn, img_params, eval_set, context):
    """(L2-normalised features, labels) of every record of `eval_set`: what a probe reads."""
    feats, labels = features_lib.labelled_features(features_fn, img_params, eval_set,
                                                   **features_lib.reading(context))
    return features_lib.l2_normalised(feats), labels


def fit_on_task(features, task, *, cs, max_iter) -> tuple[jax.Array, jax.Array, float]:
    """`fit_linear_probe` on `features(eval_set)` of the task's ID training images (their
    evaluation view), C chosen on its ID validation split: (kernel, bias, C)."""
    return fit_linear_probe(*features(task.train_eval_set), *features(task.val_set),
                            num_classes=len(task.class_names), cs=cs, max_iter=max_iter)


def check_grid(cs, max_iter) -> None:
    """ValueError for an empty grid, a C that is not a finite value > 0, or a max_iter < 1."""
    if not cs or not all(np.isfinite(c) and c > 0 for c in cs):
        raise ValueError(f"cs must be a non-empty sequence of finite values > 0; got {cs}.")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter}.")


def fit_linear_probe(train_feats, train_labels, val_feats, val_labels, *, num_classes: int,
                     cs=None, max_iter: int = 1000,
                     tolerance: float = 1e-4) -> tuple[jax.Array, jax.Array, float]:
    """Fits the probe for every C in `cs` and returns (kernel [D, classes], bias [classes], best C).

    Each fit stops after `max_iter` L-BFGS steps or once the largest gradient entry of the
    objective is below `tolerance` (sklearn's `tol`). Ties in validation accuracy go to the
    smaller C.
    """
    train_feats = checked_features("train_feats", train_feats)
    train_labels = checked_labels("train_labels", train_labels, num_rows=train_feats.shape[0],
                                  num_classes=num_classes)
    val_feats = checked_features("val_feats", val_feats, dim=train_feats.shape[1])
    val_labels = checked_labels("val_labels", val_labels, num_rows=val_feats.shape[0],
                                num_classes=num_classes)
    cs = sorted(DEFAULT_CS if cs is None else cs)
    check_grid(cs, max_iter)

    params = {"kernel": jnp.zeros((train_feats.shape[1], num_classes), jnp.float32),
              "bias": jnp.zeros((num_classes,), jnp.float32)}
    best_params, best_c, best_accuracy = None, None, -1.0
    # A CPU's matmul needs the transposed copy; an accelerator's reads the transpose for free.
    on_cpu = all(device.platform == "cpu" for device in train_feats.devices())
    train_feats_transposed = _transposed(train_feats) if on_cpu else None
    for c in cs:
        params, num_steps = _fit(params, train_feats, train_feats_transposed, train_labels, c,
                                 max_iter, tolerance)
        accuracy = float(_accuracy(params, val_feats, val_labels))
        logging.info("linear probe C=%.3g: %d L-BFGS steps, val accuracy %.4f",
                     c, int(num_steps), accuracy)
        if accuracy > best_accuracy:
            best_params, best_c, best_accuracy = params, float(c), accuracy
    return best_params["kernel"], best_params["bias"], best_c


@jax.jit
def _transposed(feats):
    """feats.T, laid out in memory as such (its own computation, so XLA cannot fold it back)."""
    return feats.T


@jax.custom_vjp
def _logits(feats, feats_transposed, kernel, bias):
    """feats @ kernel + bias, whose kernel gradient reads `feats_transposed` ([D, N], laid out
    once per fit; None: feats.T): XLA's CPU matmul runs twice as fast on it as on feats.T."""
    return feats @ kernel + bias


def _logits_forward(feats, feats_transposed, kernel, bias):
    transposed = feats.T if feats_transposed is None else feats_transposed
    return _logits(feats, feats_transposed, kernel, bias), transposed


def _logits_backward(transposed, logits_grad):
    return None, None, transposed @ logits_grad, logits_grad.sum(axis=0)


_logits.defvjp(_logits_forward, _logits_backward)


@jax.jit
def _fit(init_params, feats, feats_transposed, labels, c, max_iter, tolerance):
    """L-BFGS from `init_params` on the objective for this C; returns (params, steps taken)."""
    def objective(params):
        logits = _logits(feats, feats_transposed, params["kernel"], params["bias"])
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return cross_entropy + jnp.sum(params["kernel"] ** 2) / (2 * c * feats.shape[0])

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def largest_entry(grad):
        return optax.tree.norm(grad, ord=jnp.inf)

    def step(carry):
        params, state, num_steps, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=objective)
        new_grad = optax.tree.get(state, "grad")  # the line search's gradient at the new params
        return optax.apply_updates(params, updates), state, num_steps + 1, largest_entry(new_grad)

    def not_converged(carry):
        _, _, num_steps, largest_grad = carry
        return (num_steps < max_iter) & (largest_grad > tolerance)

    # Checked before the first step too: a warm start may already be converged, and a first
    # L-BFGS step from there (a plain gradient step of unit length) would only move away.
    init_largest_grad = largest_entry(jax.grad(objective)(init_params))
    params, _, num_steps, _ = jax.lax.while_loop(
        not_converged, step, (init_params, solver.init(init_params), 0, init_largest_grad))
    return params, num_steps


@jax.jit
def _accuracy(params, feats, labels):
    """Fraction of rows whose arg-max logit is the label."""
    logits = feats @ params["kernel"] + params["bias"]
    return (logits.argmax(axis=1) == labels).mean()
