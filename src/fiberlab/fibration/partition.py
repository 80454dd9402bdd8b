"""Clustering rows into fibers: cosine distance + average linkage (scipy), cut at a threshold.

D_ij = max(0, 1 - a_i.a_j / (|a_i| |a_j|)) in [0, 2] (scipy's ``pdist(metric="cosine")``);
average-linkage agglomerative clustering, flat clusters at cophenetic distance <= thr.
thr = 0 merges only rows parallel up to float64 rounding; thr = 2 merges everything.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

ROUNDING = 1e-10  # distances below this are rounding noise of equal rows


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel 0..K-1 in order of first appearance (fiber 0 holds unit 0)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def cluster_rows(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Fiber labels of ``rows`` [n, d]; all-zero rows (dead units) form one fiber of their own."""
    rows = np.asarray(rows, dtype=np.float64)
    n = rows.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    zero = np.linalg.norm(rows, axis=1) == 0
    live = np.flatnonzero(~zero)
    if len(live) > 1:
        d = np.clip(pdist(rows[live], metric="cosine"), 0.0, 2.0)
        z = linkage(d, method="average")
        labels[live] = fcluster(z, t=max(threshold, ROUNDING), criterion="distance")
    elif len(live) == 1:
        labels[live] = 1
    labels[zero] = 0 if zero.any() else 0
    if zero.any():
        labels[zero] = labels.max() + 1 if len(live) else 0
    return canonical(labels)


def one_hot(labels: np.ndarray, num: int | None = None) -> np.ndarray:
    """P [K, n] with P[k, j] = 1 when unit j is in fiber k."""
    num = int(labels.max()) + 1 if num is None else num
    p = np.zeros((num, len(labels)))
    p[labels, np.arange(len(labels))] = 1.0
    return p
