"""Evaluator "knn": weighted k-nearest-neighbour classification of frozen features (DINO's k-NN
protocol), the ID training images the bank, every eval set the queries.

The protocol of facebookresearch/dino `eval_knn.py`: features are L2-normalised, similarity is
cosine, each query's k most similar bank rows vote for their class with weight
exp(similarity / temperature), and a class's score is the sum of its votes.

The search is exact (ties go to the lower bank row) and its memory is bounded at any size:

- The bank is split by rows over a 1-D mesh of all devices. Each device finds the best k
  candidates in its own rows inside `jax.shard_map`, and only those k per device are gathered and
  merged. shard_map rather than jit with sharding constraints because it states that exchange
  explicitly; with constraints alone, whether `top_k` over a sharded axis gathers the whole
  similarity matrix onto every device is left to the SPMD partitioner.
- Queries are processed in chunks (`lax.map`), so at most one chunk × bank-shard block of
  similarities is alive per device (`query_chunk_size`, about 128 MiB by default).
- Within a chunk, bank rows are split into groups of `g`. The k groups whose maxima are largest
  hold the exact top k: any element of another group is beaten by those k maxima. So `top_k` runs
  over the group maxima and then over the k·g rows of the chosen groups instead of over every row,
  which on CPU is far cheaper than `top_k` over the full row (see benchmarks/knn.py).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from wlsft_jax.evals import features as features_lib
from wlsft_jax.evals.feature_checks import checked_features
from wlsft_jax.evals.feature_checks import checked_labels

DEFAULT_KS = (10, 20, 100, 200)
_BANK_AXIS = "bank"
_SIMILARITY_BLOCK_BYTES = 128 * 2**20
# ks: the k of each vote recorded; report_k: the one the report tabulates; representation: the
# features compared (features_lib.REPRESENTATIONS; "cls", the final-norm class token, is DINO's).
SETTINGS = dict(ks=(10, 20), report_k=20, representation="cls")


def report_metric(settings, kind: str) -> str:
    """k-NN top-1 at report_k, for the ID and the OOD datasets alike."""
    del kind
    return f"knn{settings['report_k']}_top1"


def recorded_metrics(settings, config, dataset: str) -> tuple[str, ...]:
    """knn{k}_top1 and knn{k}_top5 for every k of ks, on every dataset."""
    del config, dataset
    return tuple(f"knn{k}_{name}" for k in settings["ks"] for name in ("top1", "top5"))


def check(settings, config, name) -> None:
    """ks are distinct positive integers, report_k is one of them, the representation known."""
    del config
    ks = tuple(settings["ks"])
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks) or len(set(ks)) < len(ks):
        raise ValueError(f"evals.{name}.ks={ks} must be distinct positive integers, e.g. "
                         "(10, 20).")
    if settings["report_k"] not in ks:
        raise ValueError(f"evals.{name}.report_k={settings['report_k']!r} must be one of its "
                         f"ks {list(ks)}.")
    features_lib.check_representation(settings["representation"], f"evals.{name}")


class Evaluator:
    """k-NN accuracy (knn{k}_top1 / top5 for each k of ks) of the image features
    (representation) of a stage's `model` on every eval set of `context.task` (or of
    `eval_sets`), against the features of its ID training images (`task.train_eval_set`).
    Features are whole on every process, so every process computes the same k-NN."""

    def __init__(self, context, model, settings, eval_sets=None):
        self.context, self.settings = context, settings
        self.eval_sets = context.task.eval_sets if eval_sets is None else tuple(eval_sets)
        self.features_fn = features_lib.image_features_fn(model, settings["representation"])

    def run(self, params, *, method, alpha, seed) -> list[dict]:
        """Report records of the `img` part of `params` on every eval set."""
        task = self.context.task
        read = features_lib.reading(self.context)
        bank, bank_labels = features_lib.labelled_features(self.features_fn, params["img"],
                                                           task.train_eval_set, **read)
        records = []
        for eval_set in self.eval_sets:
            queries, labels = features_lib.labelled_features(self.features_fn, params["img"],
                                                             eval_set, **read)
            accuracy = eval_set_accuracy(bank, bank_labels, queries, labels, eval_set=eval_set,
                                         ks=tuple(self.settings["ks"]),
                                         num_classes=len(task.class_names))
            records += [
                dict(method=method, alpha=float(alpha), dataset=eval_set.name,
                     metric=f"knn{k}_{name}", seed=seed, value=value, kind=eval_set.kind)
                for k, values in accuracy.items() for name, value in values.items()]
        metric = report_metric(self.settings, "id")
        logging.info("%s of %s at alpha=%g: %s", metric, method, alpha, {
            r["dataset"]: round(r["value"], 4) for r in records if r["metric"] == metric})
        return records


def eval_set_accuracy(bank, bank_labels, queries, labels, *, eval_set, ks,
                      num_classes) -> dict:
    """{k: {"top1", "top5"}} of weighted k-NN; a set with a logits transform (ImageNet-R / -A,
    ObjectNet) is scored on the transformed class votes."""
    if eval_set.logits_transform is None:
        return knn_accuracy(bank, bank_labels, queries, labels, ks=ks, num_classes=num_classes)
    accuracy = {}
    for k in ks:
        votes = eval_set.logits_transform(np.asarray(knn_scores(
            bank, bank_labels, queries, k=k, num_classes=num_classes)))
        best = np.argsort(-votes, axis=1, kind="stable")[:, :5]
        # As in `knn_accuracy`, a class that got no vote never counts as a hit.
        hits = (best == np.asarray(labels)[:, None]) & (
            np.take_along_axis(votes, best, axis=1) > 0)
        accuracy[k] = {"top1": float(hits[:, 0].mean()), "top5": float(hits.any(axis=1).mean())}
    return accuracy


def _bank_mesh() -> Mesh:
    """The 1-D mesh of all devices that the bank is split over."""
    return Mesh(np.array(jax.devices()), (_BANK_AXIS,))


def _on_bank_mesh(function):
    """`function` run with the bank mesh as context mesh, so that it also works inside a run's
    own mesh (which may span other devices)."""

    @functools.wraps(function)
    def on_bank_mesh(*args, **kwargs):
        with jax.set_mesh(_bank_mesh()):
            return function(*args, **kwargs)

    return on_bank_mesh


@_on_bank_mesh
def knn_scores(train_feats, train_labels, test_feats, *, k: int, temperature: float = 0.07,
               num_classes: int, query_chunk_size: int | None = None) -> jax.Array:
    """Class scores float32[num_test, num_classes]: sums of exp(cos / temperature) over the k
    nearest train rows of each test row, by the rows' labels."""
    bank, bank_labels, queries = _checked_inputs(
        train_feats, train_labels, test_feats, ks=(k,), num_classes=num_classes,
        temperature=temperature)
    similarities, rows = _nearest_neighbours(bank, queries, k=k, query_chunk_size=query_chunk_size)
    return _weighted_votes(similarities, bank_labels[rows], temperature, num_classes=num_classes)


@_on_bank_mesh
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *,
                 ks=DEFAULT_KS, temperature: float = 0.07, num_classes: int,
                 query_chunk_size: int | None = None) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (fractions) of the weighted k-NN classifier for each k in `ks`.

    Returns {k: {"top1": ..., "top5": ...}}. The neighbours are searched once, for max(ks); a
    smaller k uses the first k of them. As in DINO, top-5 looks at the best min(5, k) classes; a
    class that got no vote never counts as a hit.
    """
    ks = tuple(ks)
    if not ks or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be a non-empty sequence of distinct positive ints; got {ks}.")
    bank, bank_labels, queries = _checked_inputs(
        train_feats, train_labels, test_feats, ks=ks, num_classes=num_classes,
        temperature=temperature)
    test_labels = checked_labels("test_labels", test_labels, num_rows=queries.shape[0],
                                 num_classes=num_classes)
    similarities, rows = _nearest_neighbours(bank, queries, k=max(ks),
                                            query_chunk_size=query_chunk_size)
    neighbour_labels = bank_labels[rows]
    accuracy = {}
    for k in ks:
        scores = _weighted_votes(similarities[:, :k], neighbour_labels[:, :k], temperature,
                                 num_classes=num_classes)
        top1, top5 = _hit_rates(scores, test_labels, top=min(5, k, num_classes))
        accuracy[int(k)] = {"top1": float(top1), "top5": float(top5)}
    return accuracy


@_on_bank_mesh
def nearest_neighbours(train_feats, test_feats, *, k: int,
                       query_chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Cosine similarities float32[num_test, k] and train rows int32[num_test, k], best first."""
    bank = checked_features("train_feats", train_feats)
    queries = checked_features("test_feats", test_feats, dim=bank.shape[1])
    _check_ks((k,), num_bank=bank.shape[0])
    return _nearest_neighbours(bank, queries, k=k, query_chunk_size=query_chunk_size)


def _nearest_neighbours(bank, queries, *, k, query_chunk_size):
    """`nearest_neighbours` on checked inputs: plans the bank layout and query chunks, searches."""
    mesh = _bank_mesh()
    num_bank, num_queries = bank.shape[0], queries.shape[0]
    rows_per_device = -(-num_bank // mesh.size)
    group_size = max(1, math.isqrt(rows_per_device // k))
    rows_per_device = -(-rows_per_device // group_size) * group_size
    if query_chunk_size is None:
        query_chunk_size = _SIMILARITY_BLOCK_BYTES // (4 * rows_per_device)
    query_chunk_size = max(1, min(query_chunk_size, num_queries))
    return _search(bank, queries, k=k, mesh=mesh, rows_per_device=rows_per_device,
                   group_size=group_size, query_chunk_size=query_chunk_size)


@functools.partial(jax.jit, static_argnames=(
    "k", "mesh", "rows_per_device", "group_size", "query_chunk_size"))
def _search(bank, queries, *, k, mesh, rows_per_device, group_size, query_chunk_size):
    """Pads, normalises and shards the bank, searches every device's rows, merges the candidates."""
    num_bank, num_queries = bank.shape[0], queries.shape[0]
    bank = jnp.pad(features_lib.l2_normalised(bank),
                   ((0, rows_per_device * mesh.size - num_bank), (0, 0)))
    num_chunks = -(-num_queries // query_chunk_size)
    queries = jnp.pad(features_lib.l2_normalised(queries),
                      ((0, num_chunks * query_chunk_size - num_queries), (0, 0)))
    shard_k = min(k, rows_per_device)
    search_shard = functools.partial(
        _search_shard, num_bank=num_bank, has_padding=num_bank < rows_per_device * mesh.size,
        shard_k=shard_k, group_size=group_size, query_chunk_size=query_chunk_size)
    candidate_sims, candidate_rows = jax.shard_map(
        search_shard, mesh=mesh, in_specs=(P(_BANK_AXIS, None), P()),
        out_specs=(P(None, _BANK_AXIS), P(None, _BANK_AXIS)))(bank, queries)
    # Candidates are ordered by device, then best first within a device: among equal
    # similarities, the lower position is the lower bank row, which top_k keeps first.
    sims, positions = lax.top_k(candidate_sims[:num_queries], k)
    return sims, jnp.take_along_axis(candidate_rows[:num_queries], positions, axis=1)


def _search_shard(bank_rows, queries, *, num_bank, has_padding, shard_k, group_size,
                  query_chunk_size):
    """The best `shard_k` (similarity, global row) of this device's bank rows for every query."""
    num_rows, dim = bank_rows.shape
    first_row = lax.axis_index(_BANK_AXIS) * num_rows
    is_padding = first_row + jnp.arange(num_rows) >= num_bank
    num_groups = num_rows // group_size

    def search_chunk(query_chunk):
        sims = query_chunk @ bank_rows.T
        if has_padding:  # static: skip the masking pass when the bank filled every row
            sims = jnp.where(is_padding, -jnp.inf, sims)
        grouped = sims.reshape(-1, num_groups, group_size)
        _, best_groups = lax.top_k(grouped.max(axis=2), shard_k)
        best_groups = jnp.sort(best_groups, axis=1)  # candidates in row order: ties -> lower row
        candidates = jnp.take_along_axis(grouped, best_groups[:, :, None], axis=1)
        best_sims, positions = lax.top_k(candidates.reshape(-1, shard_k * group_size), shard_k)
        group_of_best = jnp.take_along_axis(best_groups, positions // group_size, axis=1)
        return best_sims, first_row + group_of_best * group_size + positions % group_size

    chunks = queries.reshape(-1, query_chunk_size, dim)
    best_sims, best_rows = lax.map(search_chunk, chunks)
    return best_sims.reshape(-1, shard_k), best_rows.reshape(-1, shard_k)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _weighted_votes(similarities, neighbour_labels, temperature, *, num_classes):
    """Per-class sums of exp(similarity / temperature) over each query's neighbours."""
    weights = jnp.exp(similarities / temperature)
    query_index = jnp.arange(similarities.shape[0])[:, None]
    scores = jnp.zeros((similarities.shape[0], num_classes), jnp.float32)
    return scores.at[query_index, neighbour_labels].add(weights)


@functools.partial(jax.jit, static_argnames=("top",))
def _hit_rates(scores, labels, *, top):
    """Fractions of queries whose label is the best class / among the best `top` voted classes."""
    best_scores, best_classes = lax.top_k(scores, top)
    hits = (best_classes == labels[:, None]) & (best_scores > 0)
    return hits[:, 0].mean(), hits.any(axis=1).mean()


def _checked_inputs(train_feats, train_labels, test_feats, *, ks, num_classes, temperature):
    """Checks the k-NN inputs (ValueError naming the problem) and returns them as jax arrays."""
    bank = checked_features("train_feats", train_feats)
    bank_labels = checked_labels("train_labels", train_labels, num_rows=bank.shape[0],
                                 num_classes=num_classes)
    queries = checked_features("test_feats", test_feats, dim=bank.shape[1])
    _check_ks(ks, num_bank=bank.shape[0])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")
    return bank, bank_labels, queries


def _check_ks(ks, *, num_bank):
    """Every k must be an integer in 1..num_bank."""
    for k in ks:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_bank:
            raise ValueError(
                f"k={k} is not possible with a feature bank of {num_bank} rows; "
                f"valid k are integers 1..{num_bank}.")
