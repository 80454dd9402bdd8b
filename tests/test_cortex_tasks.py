"""Synthetic memory tasks: every label is recomputed from the tokens by an independent rule,
shapes follow each task's length formula, and a seed fixes the data."""
from __future__ import annotations

import numpy as np
import pytest

from fiberlab.experiments.memory_tasks import TASKS, chance_accuracy, make_task

N = 300


def balanced_by_reduction(row: np.ndarray) -> bool:
    """Dyck-2 check written differently from the generator's: delete adjacent '()' and '[]' pairs
    until nothing changes; the word is balanced iff nothing is left."""
    s = "".join("_()[]"[t] for t in row.tolist())
    while True:
        shorter = s.replace("()", "").replace("[]", "")
        if shorter == s:
            return s == ""
        s = shorter


def test_delayed_recall_label_is_the_cue_and_the_rest_is_blank() -> None:
    d = make_task("delayed_recall", N, seed=1, delay=7)
    assert d.tokens.shape == (N, 8) and d.tokens.dtype == np.int64 and d.labels.dtype == np.int64
    assert np.array_equal(d.labels, d.tokens[:, 0] - 1)
    assert (d.tokens[:, 1:] == 0).all()
    assert set(np.unique(d.labels)) == {0, 1, 2}
    assert (d.vocab_size, d.num_classes, d.chance) == (4, 3, pytest.approx(1 / 3))


@pytest.mark.parametrize("task", ["majority", "majority_headpad"])
def test_majority_label_is_the_unique_most_frequent_symbol(task: str) -> None:
    kw = {"length": 40, "p": 0.3} | ({"pad": 10} if task == "majority_headpad" else {})
    d = make_task(task, N, seed=2, **kw)
    assert d.tokens.shape == (N, 40)
    head = d.tokens[:, :30] if task == "majority_headpad" else d.tokens
    if task == "majority_headpad":
        assert (d.tokens[:, 30:] == 4).all() and (head != 4).all()
    assert head.max() <= 3
    for row, label in zip(head, d.labels):
        counts = [int((row == s).sum()) for s in (1, 2, 3)]
        assert counts.count(max(counts)) == 1  # ties are never emitted
        assert label == counts.index(max(counts))
    # p is respected: about 30 % of the steps hold a symbol
    assert 0.25 < (head > 0).mean() < 0.35
    assert min(np.bincount(d.labels, minlength=3)) > N / 5


def test_dyck_labels_match_an_independent_check_and_half_are_corrupted() -> None:
    d = make_task("dyck", 1000, seed=3, pairs=6)
    assert d.tokens.shape == (1000, 12) and d.tokens.min() >= 1 and d.tokens.max() <= 4
    for row, label in zip(d.tokens, d.labels):
        assert balanced_by_reduction(row) == bool(label)
    assert 0.45 < d.labels.mean() < 0.55
    # both kinds of corruption occur: count changes (open <-> close) and type swaps (count kept)
    bad = d.tokens[d.labels == 0]
    opens = np.isin(bad, (1, 3)).sum(1)
    assert (opens != 6).any() and (opens == 6).any()
    assert d.chance == 0.5


def test_two_needle_xor_label_is_the_xor_of_the_two_needles() -> None:
    d = make_task("two_needle_xor", N, seed=4, length=20, tail=5)
    assert d.tokens.shape == (N, 25)
    assert (d.tokens[:, 20:] == 0).all()
    for row, label in zip(d.tokens, d.labels):
        needles = row[row > 0]
        assert len(needles) == 2
        assert label == (needles[0] - 1) ^ (needles[1] - 1)
    assert 0.4 < d.labels.mean() < 0.6


def test_assoc_recall_label_is_the_value_stored_under_the_queried_key() -> None:
    K, V, pairs = 10, 7, 4
    d = make_task("assoc_recall", N, seed=5, length=16, pairs=pairs, tail=3, n_keys=K, n_values=V)
    assert d.tokens.shape == (N, 16 + 3 + 1)
    assert (d.vocab_size, d.num_classes, d.chance) == (1 + 2 * K + V, V, pytest.approx(1 / V))
    for row, label in zip(d.tokens, d.labels):
        assert (row[16:19] == 0).all()
        query = row[-1] - 1 - K - V
        assert 0 <= query < K
        context = row[:16]
        key_pos = np.flatnonzero((context >= 1) & (context <= K))
        assert len(key_pos) == pairs and len(set(context[key_pos].tolist())) == pairs
        stored = {int(context[p]) - 1: int(context[p + 1]) - 1 - K for p in key_pos}
        assert all(0 <= v < V for v in stored.values())  # every key is followed by a value token
        assert label == stored[int(query)]


@pytest.mark.parametrize("task", list(TASKS))
def test_same_seed_same_data_other_seed_other_data(task: str) -> None:
    small = {"delayed_recall": {"delay": 9}, "majority": {"length": 30}, "majority_headpad": {"length": 30, "pad": 5},
             "dyck": {"pairs": 5}, "two_needle_xor": {"length": 12, "tail": 3}, "assoc_recall": {"length": 12, "pairs": 2, "tail": 2}}[task]
    a, b, c = (make_task(task, 50, seed=s, **small) for s in (7, 7, 8))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.tokens, c.tokens)
    assert a.tokens.min() >= 0 and a.tokens.max() < a.vocab_size
    assert a.labels.min() >= 0 and a.labels.max() < a.num_classes


def test_defaults_are_the_reference_harness_settings() -> None:
    assert TASKS["delayed_recall"].defaults == {"delay": 512}
    assert TASKS["majority"].defaults == {"length": 1024, "p": 0.3}
    assert TASKS["majority_headpad"].defaults == {"length": 1024, "pad": 256, "p": 0.3}
    assert TASKS["dyck"].defaults == {"pairs": 50, "corrupt": 0.5}
    assert TASKS["two_needle_xor"].defaults == {"length": 256, "tail": 64}
    assert TASKS["assoc_recall"].defaults == {"length": 384, "pairs": 8, "tail": 128, "n_keys": 256, "n_values": 256}
    assert [chance_accuracy(t) for t in TASKS] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 1 / 256])
    assert make_task("assoc_recall", 4, seed=0).tokens.shape == (4, 384 + 128 + 1)


@pytest.mark.parametrize(("task", "kw", "needle"), [
    ("nope", {}, "unknown task 'nope'"),
    ("majority", {"lenght": 5}, "unknown parameter 'lenght'"),
    ("majority", {"length": 0}, "bad value 0 for majority length"),
    ("majority", {"p": 1.5}, "bad value 1.5 for majority p"),
    ("majority_headpad", {"length": 10, "pad": 10}, "pad"),
    ("assoc_recall", {"length": 10, "pairs": 6}, "pairs"),
    ("two_needle_xor", {"tail": -1}, "tail"),
])
def test_bad_parameters_are_one_line_value_errors(task: str, kw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as e:
        make_task(task, 10, seed=0, **kw)
    assert "\n" not in str(e.value)
