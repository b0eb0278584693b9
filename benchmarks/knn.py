"""k-NN evaluator speed: wlsft_jax.evals.knn against sklearn, faiss-cpu and a plain jit top_k.

    PYTHONPATH=. python benchmarks/knn.py [--bank 50000 --queries 10000 --dim 512 --k 20
                                           --repeats 3]

All contenders see the same L2-normalised clustered features and use DINO's weighting
exp(cos / 0.07) (sklearn through a callable `weights`); faiss (optional, `pip install faiss-cpu`)
only searches. Prints the median time of each, its ratio to ours, and how far the answers agree;
the last lines read `ratio <R>x vs <baseline>` (R: the baseline's time over ours).
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from interleaved_timing import interleaved_medians
from wlsft_jax.evals import knn

TEMPERATURE = 0.07
NUM_CLASSES = 100
OURS = "wlsft_jax knn_scores"
PLAIN_JIT = "jit(q @ b.T) + lax.top_k (search only)"
SKLEARN = "sklearn KNeighborsClassifier brute cosine n_jobs=2"
FAISS = "faiss-cpu IndexFlatIP (search only)"


def clustered_features(num_rows, means, rng):
    """L2-normalised class mean + noise rows, and their labels."""
    labels = rng.integers(0, len(means), num_rows)
    feats = means[labels] + rng.standard_normal((num_rows, means.shape[1]), np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    means = (rng.standard_normal((NUM_CLASSES, args.dim)) * 0.2).astype(np.float32)
    bank, bank_labels = clustered_features(args.bank, means, rng)
    queries, query_labels = clustered_features(args.queries, means, rng)
    bank_on_device, queries_on_device = jnp.asarray(bank), jnp.asarray(queries)

    def ours():
        return np.asarray(knn.knn_scores(bank_on_device, bank_labels, queries_on_device,
                                         k=args.k, temperature=TEMPERATURE,
                                         num_classes=NUM_CLASSES))

    plain_top_k = jax.jit(lambda b, q: jax.lax.top_k(q @ b.T, args.k))

    def plain_jit():
        return jax.block_until_ready(plain_top_k(bank_on_device, queries_on_device))

    def sklearn_knn():
        classifier = KNeighborsClassifier(
            n_neighbors=args.k, algorithm="brute", metric="cosine", n_jobs=2,
            weights=lambda distances: np.exp((1 - distances) / TEMPERATURE))
        return classifier.fit(bank, bank_labels).predict(queries)

    contenders = {OURS: ours, PLAIN_JIT: plain_jit, SKLEARN: sklearn_knn}
    try:
        import faiss  # pylint: disable=import-outside-toplevel
        faiss.omp_set_num_threads(2)

        def faiss_search():
            index = faiss.IndexFlatIP(args.dim)
            index.add(bank)
            return index.search(queries, args.k)

        contenders[FAISS] = faiss_search
    except ImportError:
        print("faiss-cpu is not installed, so its row is left out (pip install faiss-cpu).")
    seconds, results = interleaved_medians(contenders, args.repeats)

    predictions = results[OURS].argmax(axis=1)
    _, ours_rows = knn.nearest_neighbours(bank_on_device, queries_on_device, k=args.k)
    ours_rows = np.sort(np.asarray(ours_rows), axis=1)

    def same_neighbours(rows):
        same = (ours_rows == np.sort(np.asarray(rows), axis=1)).all(axis=1)
        return f"same neighbour set {same.mean():.4%}"

    agreement = {
        OURS: f"top-1 {(predictions == query_labels).mean():.4f}",
        PLAIN_JIT: same_neighbours(results[PLAIN_JIT][1]),
        SKLEARN: f"top-1 {(results[SKLEARN] == query_labels).mean():.4f}, "
                 f"same prediction {(results[SKLEARN] == predictions).mean():.4%}",
    }
    if FAISS in results:
        agreement[FAISS] = same_neighbours(results[FAISS][1])

    print(f"k-NN: bank {args.bank} x queries {args.queries} x dim {args.dim}, k={args.k}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"median of {args.repeats} interleaved repeats")
    print(f"| {'method':52} | {'seconds':>7} | {'ours is x faster':>16} | agreement |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 18}|-----------|")
    for name, note in agreement.items():
        print(f"| {name:52} | {seconds[name]:7.3f} | {seconds[name] / seconds[OURS]:16.2f} "
              f"| {note} |")
    for name in agreement:
        if name != OURS:
            print(f"ratio {seconds[name] / seconds[OURS]:.2f}x vs {name}")


if __name__ == "__main__":
    main()
