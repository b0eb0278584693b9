"""k-NN evaluator against a plain NumPy version of DINO's weighted k-NN, on 8 CPU devices."""
import jax
import numpy as np
import pytest

from wlsft_jax.evals import knn

TEMPERATURE = 0.07


def numpy_knn_scores(train_feats, train_labels, test_feats, k, num_classes):
    """DINO's weighted vote, written plainly; ties between bank rows go to the lower row."""
    train_feats = train_feats / np.linalg.norm(train_feats, axis=1, keepdims=True)
    test_feats = test_feats / np.linalg.norm(test_feats, axis=1, keepdims=True)
    similarities = test_feats @ train_feats.T
    neighbours = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(test_feats), num_classes), np.float32)
    for query, rows in enumerate(neighbours):
        np.add.at(scores[query], train_labels[rows],
                  np.exp(similarities[query, rows] / TEMPERATURE))
    return scores


def random_problem(num_train, num_test, *, dim=16, num_classes=7, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num_train, dim)).astype(np.float32),
            rng.integers(0, num_classes, num_train),
            rng.standard_normal((num_test, dim)).astype(np.float32),
            rng.integers(0, num_classes, num_test))


def test_runs_on_eight_devices():
    assert jax.device_count() == 8  # tests/conftest.py; the bank really is split 8 ways.


@pytest.mark.parametrize("num_train, num_test, k, query_chunk_size", [
    (37, 11, 3, None),   # k < 5; 37 rows do not split evenly over 8 devices
    (301, 13, 20, 4),    # 13 queries in chunks of 4; groups of rows within each device
    (2000, 9, 200, 5),   # large k: every device returns 200 candidates
    (50, 1, 7, None),    # a single query
    (9, 5, 9, None),     # k == bank size: every row is a neighbour
])
def test_scores_match_numpy(num_train, num_test, k, query_chunk_size):
    train_feats, train_labels, test_feats, _ = random_problem(num_train, num_test)
    scores = knn.knn_scores(train_feats, train_labels, test_feats, k=k, num_classes=7,
                            query_chunk_size=query_chunk_size)
    assert scores.shape == (num_test, 7) and scores.dtype == np.float32
    np.testing.assert_allclose(
        scores, numpy_knn_scores(train_feats, train_labels, test_feats, k, 7), rtol=1e-5)


@pytest.mark.parametrize("k", [2, 6])
def test_ties_go_to_the_lower_bank_row(k):
    # One-hot rows make every similarity exactly 0 or 1: four rows (spread over devices and row
    # groups) tie at 1 with different labels, all others tie at 0.
    rng = np.random.default_rng(0)
    directions = rng.integers(1, 8, 400)
    tied_rows = [7, 13, 260, 399]
    directions[tied_rows] = 0
    train_feats = np.eye(8, dtype=np.float32)[directions]
    train_labels = rng.integers(0, 5, 400)
    train_labels[tied_rows] = [4, 2, 0, 1]
    test_feats = np.eye(8, dtype=np.float32)[:1]
    scores = knn.knn_scores(train_feats, train_labels, test_feats, k=k, num_classes=5)
    np.testing.assert_allclose(
        scores, numpy_knn_scores(train_feats, train_labels, test_feats, k, 5), rtol=1e-6)
    np.testing.assert_allclose(scores[0, [4, 2]], np.exp(1 / TEMPERATURE), rtol=1e-6)


def test_nearest_neighbours_are_sorted_and_exact():
    train_feats, _, test_feats, _ = random_problem(123, 6)
    similarities, rows = knn.nearest_neighbours(train_feats, test_feats, k=10)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.argsort(-(unit(test_feats) @ unit(train_feats).T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    assert np.all(np.diff(np.asarray(similarities), axis=1) <= 0)


def test_accuracy_matches_numpy_including_k_below_five():
    train_feats, train_labels, test_feats, test_labels = random_problem(200, 40, num_classes=7)
    test_labels[:20] = train_labels[:20]  # make some queries nearest to their own class
    test_feats[:20] = train_feats[:20] + 0.1 * test_feats[:20]
    accuracy = knn.knn_accuracy(train_feats, train_labels, test_feats, test_labels,
                                ks=(1, 3, 20), num_classes=7)
    assert set(accuracy) == {1, 3, 20}
    for k in (1, 3, 20):
        scores = numpy_knn_scores(train_feats, train_labels, test_feats, k, 7)
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :min(5, k)]
        voted = np.take_along_axis(scores, ranked, axis=1) > 0
        hits = (ranked == test_labels[:, None]) & voted
        assert accuracy[k]["top1"] == pytest.approx(hits[:, 0].mean())
        assert accuracy[k]["top5"] == pytest.approx(hits.any(axis=1).mean())
    assert accuracy[1]["top1"] == accuracy[1]["top5"]  # one neighbour votes for one class
    assert accuracy[1]["top1"] >= 0.5


@pytest.mark.parametrize("change, message", [
    (lambda p: p["train_feats"].__setitem__((3, 1), np.nan), "train_feats contains NaN"),
    (lambda p: p["test_feats"].__setitem__((0, 0), np.nan), "test_feats contains NaN"),
    (lambda p: p.update(train_feats=np.zeros((0, 4), np.float32),
                        train_labels=np.zeros((0,), int)), "train_feats is empty"),
    (lambda p: p["train_labels"].__setitem__(0, 3), r"label 3; valid labels are 0\.\.2"),
    (lambda p: p["train_labels"].__setitem__(0, -1), r"label -1; valid labels are 0\.\.2"),
    (lambda p: p.update(test_feats=np.ones((2, 5), np.float32)), "5 features per row"),
    (lambda p: p.update(k=11), r"k=11 is not possible .* valid k are integers 1\.\.10"),
    (lambda p: p.update(k=0), "k=0 is not possible"),
    (lambda p: p.update(train_labels=np.zeros(9, int)), r"must have shape \(10,\)"),
    (lambda p: p.update(temperature=0.0), "temperature must be > 0"),
])
def test_bad_input_raises(change, message):
    problem = {"train_feats": np.ones((10, 4), np.float32), "train_labels": np.zeros(10, int),
               "test_feats": np.ones((2, 4), np.float32), "k": 3, "temperature": 0.07}
    change(problem)
    with pytest.raises(ValueError, match=message):
        knn.knn_scores(problem["train_feats"], problem["train_labels"], problem["test_feats"],
                       k=problem["k"], temperature=problem["temperature"], num_classes=3)


def test_accuracy_rejects_bad_ks_and_test_labels():
    train_feats, train_labels, test_feats, test_labels = random_problem(20, 4)
    with pytest.raises(ValueError, match=r"k=30 is not possible"):
        knn.knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes=7,
                         ks=(10, 30))
    with pytest.raises(ValueError, match="distinct"):
        knn.knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes=7,
                         ks=(3, 3))
    with pytest.raises(ValueError, match=r"test_labels contains label 7"):
        knn.knn_accuracy(train_feats, train_labels, test_feats, np.full(4, 7), num_classes=7,
                         ks=(3,))
