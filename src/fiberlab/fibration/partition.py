"""Clustering rows into fibers: cosine distance + average linkage (scipy), cut at a threshold.

D_ij = max(0, 1 - a_i.a_j / (|a_i| |a_j|)) in [0, 2] (what scipy's ``pdist(metric="cosine")``
computes); average-linkage agglomerative clustering, flat clusters at cophenetic distance <= thr.
thr = 0 merges only rows parallel up to float64 rounding; thr = 2 merges everything.

The distances come from the Gram matrix G = A A^T (one BLAS call) rather than from scipy's
pair-by-pair cosine loop, which was most of find_fibers' time: callers that know G in pieces (the
LSTM's fixed W_ih part plus the changing W_hh P_h^T part) pass it to :func:`cluster_gram`.
Both agree with ``pdist`` up to float64 rounding (~1e-16), far below any threshold in use.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

ROUNDING = 1e-10  # distances below this are rounding noise of equal rows


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel 0..K-1 in order of first appearance (fiber 0 holds unit 0)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.ravel()]


def meet(*labels: np.ndarray) -> np.ndarray:
    """The common refinement of partitions of the same units, as canonical labels: two units share
    a block of the meet exactly when they share one in every argument."""
    return canonical(np.unique(np.stack(labels, 1), axis=0, return_inverse=True)[1].ravel())


def sum_columns(w: np.ndarray, colors: np.ndarray, num: int | None = None) -> np.ndarray:
    """``w @ one_hot(colors, num).T``: the columns of ``w`` [m, n] summed per color, [m, K]."""
    colors = np.asarray(colors, dtype=np.int64)
    num = int(colors.max()) + 1 if num is None else int(num)
    m, n = w.shape
    out = np.zeros((m, num), dtype=np.result_type(w.dtype, np.float64))
    if n == 0:
        return out
    counts = np.bincount(colors, minlength=num)
    if n == num and counts.max() == 1:  # a permutation: no sums at all
        out[:, colors] = w
        return out
    order = np.argsort(colors, kind="stable")
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
    out[:, present] = np.add.reduceat(w[:, order], starts, axis=1)
    return out


def _cosine_condensed(gram: np.ndarray) -> np.ndarray:
    """Condensed cosine distances from a Gram matrix of nonzero rows (overwrites ``gram``)."""
    norms = np.sqrt(np.diagonal(gram))
    gram /= np.multiply.outer(norms, norms)
    np.clip(gram, -1.0, 1.0, out=gram)
    np.subtract(1.0, gram, out=gram)
    np.fill_diagonal(gram, 0.0)
    return squareform(gram, checks=False)


def cluster_gram(gram: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`cluster_rows` given only the Gram matrix ``A A^T`` [n, n] of the rows (consumed)."""
    gram = np.asarray(gram, dtype=np.float64)
    n = gram.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    zero = np.diagonal(gram) == 0  # sum of squares is 0 exactly when the row is all zeros
    live = np.flatnonzero(~zero)
    if len(live) > 1:
        sub = gram if len(live) == n else gram[np.ix_(live, live)]
        z = linkage(_cosine_condensed(sub), method="average")
        labels[live] = fcluster(z, t=max(threshold, ROUNDING), criterion="distance")
    elif len(live) == 1:
        labels[live] = 1
    if zero.any():
        labels[zero] = labels.max() + 1 if len(live) else 0
    return canonical(labels)


def cluster_rows(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Fiber labels of ``rows`` [n, d]; all-zero rows (dead units) form one fiber of their own."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[0] == 1:
        return np.zeros(1, dtype=np.int64)
    return cluster_gram(rows @ rows.T, threshold)


def one_hot(labels: np.ndarray, num: int | None = None) -> np.ndarray:
    """P [K, n] with P[k, j] = 1 when unit j is in fiber k."""
    num = int(labels.max()) + 1 if num is None else num
    p = np.zeros((num, len(labels)))
    p[labels, np.arange(len(labels))] = 1.0
    return p
