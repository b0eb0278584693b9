"""Linear probe: same solution as sklearn's LogisticRegression, C chosen on the validation split."""
import numpy as np
import pytest
from scipy.special import softmax

from wlsft_jax.evals.linear_probe import fit_linear_probe

sklearn_linear_model = pytest.importorskip(
    "sklearn.linear_model", reason="test extra not installed: pip install -e .[test]")


def gaussian_classes(num_rows, means, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(means), num_rows)
    feats = means[labels] + rng.standard_normal((num_rows, means.shape[1]))
    return feats.astype(np.float32), labels


def shortcut_problem(num_rows, *, shortcut_follows_label, seed):
    """3 classes: two large-scale noisy signal features and a tiny one-hot "shortcut".

    Fitting the shortcut needs large weights, so only weak regularisation (large C) uses it;
    very strong regularisation learns nothing; in between the signal features are used.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, num_rows)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    signal = 3 * (centres[labels] + 0.6 * rng.standard_normal((num_rows, 2)))
    shortcut_class = labels if shortcut_follows_label else rng.integers(0, 3, num_rows)
    shortcut = 0.1 * np.eye(3)[shortcut_class]
    return np.concatenate([signal, shortcut], axis=1).astype(np.float32), labels


def test_matches_sklearn_logistic_regression():
    means = np.random.default_rng(0).standard_normal((5, 20)) * 0.4
    train_feats, train_labels = gaussian_classes(600, means, seed=1)
    test_feats, test_labels = gaussian_classes(2000, means, seed=2)
    kernel, bias, best_c = fit_linear_probe(train_feats, train_labels, test_feats[:100],
                                            test_labels[:100], num_classes=5, cs=[0.05],
                                            tolerance=1e-6)
    assert best_c == 0.05 and kernel.shape == (20, 5) and bias.shape == (5,)
    sklearn_probe = sklearn_linear_model.LogisticRegression(C=0.05, tol=1e-8, max_iter=1000)
    sklearn_probe.fit(train_feats, train_labels)

    logits = test_feats @ np.asarray(kernel) + np.asarray(bias)
    accuracy = (logits.argmax(axis=1) == test_labels).mean()
    assert abs(accuracy - sklearn_probe.score(test_feats, test_labels)) <= 0.005
    # The optimum is unique, so the probabilities agree (the bias only up to a constant shift).
    np.testing.assert_allclose(softmax(logits, axis=1), sklearn_probe.predict_proba(test_feats),
                               atol=2e-3)
    np.testing.assert_allclose(kernel, sklearn_probe.coef_.T, atol=2e-3)


def test_picks_c_on_the_validation_split():
    train_feats, train_labels = shortcut_problem(150, shortcut_follows_label=True, seed=0)
    cs = (1e-5, 1.0, 1e4)
    # Where the shortcut does not hold on val, the middle C wins; where it holds, the weakest.
    shifted_val = shortcut_problem(300, shortcut_follows_label=False, seed=1)
    kernel, bias, best_c = fit_linear_probe(train_feats, train_labels, *shifted_val,
                                            num_classes=3, cs=cs)
    assert best_c == 1.0
    accuracy = ((shifted_val[0] @ np.asarray(kernel) + np.asarray(bias)).argmax(axis=1)
                == shifted_val[1]).mean()
    assert accuracy > 0.7
    same_val = shortcut_problem(300, shortcut_follows_label=True, seed=1)
    _, _, best_c = fit_linear_probe(train_feats, train_labels, *same_val, num_classes=3, cs=cs)
    assert best_c == 1e4


@pytest.mark.parametrize("change, message", [
    (lambda p: p["train_feats"].__setitem__((0, 0), np.nan), "train_feats contains NaN"),
    (lambda p: p["val_feats"].__setitem__((1, 1), np.inf), "val_feats contains NaN or infinite"),
    (lambda p: p.update(train_feats=np.zeros((0, 4), np.float32),
                        train_labels=np.zeros((0,), int)), "train_feats is empty"),
    (lambda p: p["train_labels"].__setitem__(0, 3), r"label 3; valid labels are 0\.\.2"),
    (lambda p: p["val_labels"].__setitem__(0, -2), r"val_labels contains label -2"),
    (lambda p: p.update(val_feats=np.ones((5, 6), np.float32)), "6 features per row"),
    (lambda p: p.update(train_labels=np.zeros(10, np.float32)), "must hold integer class ids"),
    (lambda p: p.update(cs=[1.0, -1.0]), "cs must be a non-empty sequence of finite values > 0"),
    (lambda p: p.update(cs=[]), "cs must be a non-empty sequence"),
    (lambda p: p.update(max_iter=0), "max_iter must be a positive integer"),
])
def test_bad_input_raises(change, message):
    problem = {"train_feats": np.ones((10, 4), np.float32), "train_labels": np.arange(10) % 3,
               "val_feats": np.ones((5, 4), np.float32), "val_labels": np.arange(5) % 3,
               "cs": None, "max_iter": 10}
    change(problem)
    with pytest.raises(ValueError, match=message):
        fit_linear_probe(problem["train_feats"], problem["train_labels"], problem["val_feats"],
                         problem["val_labels"], num_classes=3, cs=problem["cs"],
                         max_iter=problem["max_iter"])


def test_the_cpu_transposed_features_and_the_accelerator_path_fit_the_same_probe():
    """On CPU the kernel gradient reads a transposed copy of the features; elsewhere feats.T."""
    import jax.numpy as jnp

    from wlsft_jax.evals import linear_probe

    feats, labels = gaussian_classes(300, np.eye(5, 16, dtype=np.float32) * 2, seed=3)
    feats, labels = jnp.asarray(feats), jnp.asarray(labels)
    start = {"kernel": jnp.zeros((16, 5)), "bias": jnp.zeros(5)}
    fits = [linear_probe._fit(start, feats, transposed, labels, 1.0, 100, 1e-4)
            for transposed in (linear_probe._transposed(feats), None)]
    (cpu, cpu_steps), (accelerator, accelerator_steps) = fits
    assert cpu_steps == accelerator_steps > 1
    np.testing.assert_allclose(cpu["kernel"], accelerator["kernel"], atol=1e-5)
    np.testing.assert_allclose(cpu["bias"], accelerator["bias"], atol=1e-5)
