"""Linear-probe C-sweep speed: wlsft_jax.evals.linear_probe against sklearn's LogisticRegression.

    PYTHONPATH=. python benchmarks/linear_probe.py [--train 20000 --dim 512 --classes 100
                                                    --num-cs 10 --max-iter 200 --repeats 3]

Both fit the same objective (multinomial, L2 on the kernel, sklearn's C) with L-BFGS over the
same log-spaced grid of C, smallest first, each fit warm-started from the previous one, stopping
at `--max-iter` steps or a largest gradient entry below 1e-4; both choose C on the validation
split. Prints the median sweep time, the ratio to ours, and each one's chosen C and accuracies;
the last line reads `ratio <R>x vs sklearn` (R: sklearn's time over ours).
"""
import argparse
import warnings

import jax
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from interleaved_timing import interleaved_medians
from wlsft_jax.evals.linear_probe import fit_linear_probe

OURS = "wlsft_jax fit_linear_probe (optax L-BFGS, jit)"
SKLEARN = "sklearn LogisticRegression lbfgs, warm_start"


def gaussian_classes(num_rows, means, rng):
    """Rows of class mean + unit noise, and their labels."""
    labels = rng.integers(0, len(means), num_rows)
    feats = means[labels] + rng.standard_normal((num_rows, means.shape[1]), np.float32)
    return feats, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--num-cs", type=int, default=10)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    means = (rng.standard_normal((args.classes, args.dim)) * 0.1).astype(np.float32)
    train_feats, train_labels = gaussian_classes(args.train, means, rng)
    val_feats, val_labels = gaussian_classes(args.train // 4, means, rng)
    test_feats, test_labels = gaussian_classes(args.train // 4, means, rng)
    cs = np.logspace(-4, 2, args.num_cs)

    def accuracy(kernel, bias, feats, labels):
        return ((feats @ np.asarray(kernel) + np.asarray(bias)).argmax(axis=1) == labels).mean()

    def ours():
        kernel, bias, best_c = fit_linear_probe(
            train_feats, train_labels, val_feats, val_labels, num_classes=args.classes, cs=cs,
            max_iter=args.max_iter)
        return np.asarray(kernel), np.asarray(bias), best_c

    def sklearn_sweep():
        probe = LogisticRegression(solver="lbfgs", max_iter=args.max_iter, tol=1e-4,
                                   warm_start=True)
        best = (-1.0, None)
        for c in cs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                probe.set_params(C=c).fit(train_feats, train_labels)
            val_accuracy = probe.score(val_feats, val_labels)
            if val_accuracy > best[0]:
                best = (val_accuracy, (probe.coef_.T.copy(), probe.intercept_.copy(), c))
        return best[1]

    seconds, results = interleaved_medians({OURS: ours, SKLEARN: sklearn_sweep}, args.repeats)

    print(f"Linear probe: {args.train} x {args.dim}, {args.classes} classes, {args.num_cs} C "
          f"values in [1e-4, 1e2], max_iter {args.max_iter}, {jax.devices()[0].platform}, "
          f"median of {args.repeats} interleaved repeats")
    print(f"| {'method':46} | {'seconds':>7} | {'ours is x faster':>16} | best C | val acc "
          f"| test acc |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 18}|--------|---------|----------|")
    for name, (kernel, bias, best_c) in results.items():
        print(f"| {name:46} | {seconds[name]:7.3f} | {seconds[name] / seconds[OURS]:16.2f} "
              f"| {best_c:6.2g} | {accuracy(kernel, bias, val_feats, val_labels):7.4f} "
              f"| {accuracy(kernel, bias, test_feats, test_labels):8.4f} |")
    print(f"ratio {seconds[SKLEARN] / seconds[OURS]:.2f}x vs sklearn")


if __name__ == "__main__":
    main()
