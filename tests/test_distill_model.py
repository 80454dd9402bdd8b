"""The AD transformer, its training windows and its checkpoints (fiberlab.distill.model, windows,
ad_checkpoint): the math against plain reference code, causality, window gathering against a slow
Python loop, marker vectors, and the safe checkpoint format's round trip and refusals."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiberlab.distill.config import ADConfig
from fiberlab.distill.model import ADTransformer, apply_rope, rope_tables
from fiberlab.errors import BadInput

MOVES = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]])


def tiny_cfg(**kw) -> ADConfig:
    base = {"tf_n_embd": 16, "tf_n_head": 2, "tf_n_layer": 2, "tf_dim_feedforward": 24, "n_transit": 12, "tf_dropout": 0.0,
            "device": "cpu", "torch_threads": 1}
    return ADConfig(**{**base, **kw})


def random_transitions(B: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.randint(0, 9, (B, L, 2), generator=gen)
    a = torch.randint(0, 5, (B, L, 1), generator=gen)
    r = torch.randint(0, 2, (B, L, 1), generator=gen)
    s2 = torch.randint(0, 9, (B, L, 2), generator=gen)
    return torch.cat([s, a, r, s2], -1), torch.randint(0, 9, (B, 2), generator=gen)


def expert_goal(goal: int, T: int, S: int, rng: np.random.Generator, horizon: int = 20, eps: float = 0.1,
                policy: str = "expert") -> dict[str, np.ndarray]:
    """One Darkroom goal's streams, time-major. ``policy="expert"`` walks to the goal (x first, then
    y, then stays); ``"state"`` takes action (x + 2y) mod 5 wherever it is (a rule shared by every
    goal: what a model can learn from a handful of streams). Either acts at random with probability
    ``eps``; action_probs are the probabilities of the taken actions under that policy."""
    gx, gy = divmod(goal, 9)
    states = np.zeros((T, S, 2), np.int32)
    nxt = np.zeros_like(states)
    acts = np.zeros((T, S), np.int32)
    rew = np.zeros((T, S), np.float32)
    probs = np.zeros((T, S), np.float32)
    s = np.full((S, 2), 4)
    for t in range(T):
        if t % horizon == 0:
            s = np.full((S, 2), 4)
        if policy == "state":
            best = (s[:, 0] + 2 * s[:, 1]) % 5
        else:
            best = np.where(s[:, 0] < gx, 0, np.where(s[:, 0] > gx, 1, np.where(s[:, 1] < gy, 2, np.where(s[:, 1] > gy, 3, 4))))
        rand = rng.random(S) < eps
        a = np.where(rand, rng.integers(0, 5, S), best)
        n = np.clip(s + MOVES[a], 0, 8)
        states[t], acts[t], nxt[t] = s, a, n
        rew[t] = (n[:, 0] == gx) & (n[:, 1] == gy)
        probs[t] = np.where(a == best, 1 - eps + eps / 5, eps / 5)
        s = n
    dones = np.tile((np.arange(T) % horizon == horizon - 1)[:, None], (1, S))
    return {"states": states, "actions": acts, "rewards": rew, "next_states": nxt, "dones": dones, "action_probs": probs}


def expert_history(path: Path, goals: list[int], T: int = 60, S: int = 3, seed: int = 0, eps: float = 0.1, policy: str = "expert") -> Path:
    """A tiny history file in the schema (via histories.write_history) of scripted streams."""
    from fiberlab.distill.histories import GoalHistory, write_history

    rng = np.random.default_rng(seed)
    items = []
    for g in goals:
        a = expert_goal(g, T, S, rng, eps=eps, policy=policy)
        items.append((g, GoalHistory(**a, compression_mask=(a["action_probs"] >= 0.7).astype(np.uint8))))
    attrs = {"env": "darkroom", "alg": "PPO", "alg_seed": 0, "n_stream": S, "horizon": 20, "on_policy_threshold": 0.7,
             "compression_window": 10, "mask_rule": "lookahead", "total_steps": T * S * len(goals), "compressed_steps": 0,
             "compression_ratio": 0.0}
    return write_history(path, items, attrs)


# --------------------------------------------------------------------------- the math
def test_embedding_lookup_equals_linear_on_the_one_hot_concat():
    """Linear(10)(concat(s, onehot(a), r, s')) == W_c [s, r, s'] + W_a[:, a] + b, values and gradients."""
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg())
    tr, _ = random_transitions(4, 7, torch.Generator().manual_seed(1))
    concat = torch.cat([tr[..., :2].float(), F.one_hot(tr[..., 2], 5).float(), tr[..., 3:4].float(), tr[..., 4:].float()], -1)
    ref = m.embed_transition(concat)
    ours = m.embed_transitions(tr)
    assert torch.allclose(ours, ref, atol=1e-5)
    g = torch.randn_like(ref)
    (w_ref, b_ref) = torch.autograd.grad((ref * g).sum(), [m.embed_transition.weight, m.embed_transition.bias])
    (w_ours, b_ours) = torch.autograd.grad((ours * g).sum(), [m.embed_transition.weight, m.embed_transition.bias])
    assert torch.allclose(w_ours, w_ref, atol=1e-4) and torch.allclose(b_ours, b_ref, atol=1e-5)


def reference_forward(m: ADTransformer, tr: torch.Tensor, q: torch.Tensor, start=None, end=None) -> torch.Tensor:
    """The documented math written plainly: RMSNorm with its gain, RoPE by rotate-half on q and k,
    softmax attention with an explicit causal mask, SwiGLU, all positions, the query row read last."""
    concat = torch.cat([tr[..., :2].float(), F.one_hot(tr[..., 2], 5).float(), tr[..., 3:4].float(), tr[..., 4:].float()], -1)
    ctx = m.embed_transition(concat)
    if m.has_markers and start is not None:
        ctx = ctx + start[..., None].float() * m.start_marker + end[..., None].float() * m.end_marker
    x = torch.cat([ctx, m.embed_query(q[:, 0] * 9 + q[:, 1])[:, None]], 1)
    B, T, d = x.shape
    cos, sin = rope_tables(T, m.head_dim)
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def rms(v, g):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * g

    for blk in m.blocks:
        h = rms(x, blk.norm1.weight)
        q_, k_, v_ = (h @ blk.qkv.weight.T).split(d, -1)
        q_, k_, v_ = (t.view(B, T, blk.n_head, blk.head_dim).transpose(1, 2) for t in (q_, k_, v_))
        q_, k_ = apply_rope(q_, cos, sin), apply_rope(k_, cos, sin)
        att = (q_ @ k_.transpose(-1, -2)) / blk.head_dim ** 0.5
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + ((att @ v_).transpose(1, 2).reshape(B, T, d)) @ blk.proj.weight.T
        h = rms(x, blk.norm2.weight)
        gate, up = (h @ blk.w13.weight.T).split(blk.d_ff, -1)
        x = x + (F.silu(gate) * up) @ blk.w2.weight.T
    return m.head(rms(x, m.norm.weight))[:, -1]


@pytest.mark.parametrize("model", ["ad", "compressed"])
def test_forward_equals_the_plain_reference(model):
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg(model=model)).eval()
    with torch.no_grad():  # non-trivial norm gains, so folding them into the weights is exercised
        for blk in m.blocks:
            blk.norm1.weight.uniform_(0.5, 1.5)
            blk.norm2.weight.uniform_(0.5, 1.5)
        m.norm.weight.uniform_(0.5, 1.5)
    gen = torch.Generator().manual_seed(2)
    tr, q = random_transitions(5, 11, gen)
    start, end = torch.rand(5, 11, generator=gen) < 0.3, torch.rand(5, 11, generator=gen) < 0.3
    with torch.no_grad():
        ours = m(tr, q, start, end)
        ref = reference_forward(m, tr, q, start, end)
        hidden_last = F.linear(m.hidden(tr, q, start, end)[:, -1], m.head.weight, m.head.bias)
    assert ours.shape == (5, 5)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert torch.allclose(ours, hidden_last, atol=1e-4)  # the query-row-only last block = the full block's last row


def test_rope_rotates_pairs_by_position_angles():
    """RoPE makes q_p . k_s depend on p - s only."""
    cos, sin = rope_tables(20, 8)
    q, k = torch.randn(8), torch.randn(8)
    dots = [(apply_rope(q, cos[p], sin[p]) @ apply_rope(k, cos[p - 3], sin[p - 3])).item() for p in (3, 7, 19)]
    assert max(dots) - min(dots) < 1e-4
    assert abs(apply_rope(q, cos[0], sin[0]).norm() - q.norm()) < 1e-5  # a rotation


def test_gradients_match_the_reference():
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg(model="compressed"))
    gen = torch.Generator().manual_seed(3)
    tr, q = random_transitions(4, 11, gen)
    start, end = torch.rand(4, 11, generator=gen) < 0.3, torch.rand(4, 11, generator=gen) < 0.3
    y = torch.randint(0, 5, (4,), generator=gen)
    params = [p for _, p in m.named_parameters()]
    g_ours = torch.autograd.grad(F.cross_entropy(m(tr, q, start, end), y), params)
    g_ref = torch.autograd.grad(F.cross_entropy(reference_forward(m, tr, q, start, end), y), params)
    for (name, _), a, b in zip(m.named_parameters(), g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3), name


def test_dropout_is_off_in_eval_and_on_in_training():
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg(tf_dropout=0.3))
    tr, q = random_transitions(3, 11, torch.Generator().manual_seed(4))
    m.eval()
    assert torch.equal(m(tr, q), m(tr, q))
    m.train()
    assert not torch.equal(m(tr, q), m(tr, q))


# --------------------------------------------------------------------------- causality
def test_prefix_positions_ignore_what_comes_after():
    """Changing transitions after position t never changes the hidden states at positions <= t,
    and a model cut at t (query at t) sees the same prefix states."""
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg()).eval()
    gen = torch.Generator().manual_seed(5)
    tr, q = random_transitions(3, 11, gen)
    changed = tr.clone()
    t = 6
    changed[:, t + 1:], _ = random_transitions(3, 11 - t - 1, gen)
    with torch.no_grad():
        h, h2 = m.hidden(tr, q), m.hidden(changed, q)
        cut = m.hidden(tr[:, :t + 1], q)
    assert torch.allclose(h[:, :t + 1], h2[:, :t + 1], atol=1e-6)
    assert not torch.allclose(h[:, t + 1:], h2[:, t + 1:], atol=1e-3)
    assert torch.allclose(cut[:, :t + 1], h[:, :t + 1], atol=1e-5)
    with torch.no_grad():  # the query logits see the whole context they are given
        assert not torch.allclose(m(tr, q), m(changed, q), atol=1e-4)


def test_causal_markers_do_not_depend_on_future_steps_lookahead_ones_do():
    from fiberlab.distill.windows import stream_markers

    rng = np.random.default_rng(0)
    probs = rng.uniform(0.5, 1.0, (200, 4)).astype(np.float32)
    future = probs.copy()
    t = 120
    future[t + 1:] = rng.uniform(0.0, 1.0, future[t + 1:].shape)
    for rule, causal in (("causal", True), ("lookahead", False)):
        cfg = tiny_cfg(model="compressed", mask_rule=rule, on_policy_threshold=0.7, compression_window=5)
        (s1, e1), (s2, e2) = stream_markers(probs, cfg), stream_markers(future, cfg)
        assert s1.shape == (4, 200)
        same = np.array_equal(s1[:, :t + 1], s2[:, :t + 1]) and np.array_equal(e1[:, :t + 1], e2[:, :t + 1])
        assert same == causal, rule


# --------------------------------------------------------------------------- markers
def test_marker_vectors_exist_only_for_marker_models():
    torch.manual_seed(0)
    ad = ADTransformer(tiny_cfg(model="ad")).eval()
    assert not any("marker" in n for n, _ in ad.named_parameters())
    gen = torch.Generator().manual_seed(6)
    tr, q = random_transitions(3, 11, gen)
    start = torch.ones(3, 11, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(ad(tr, q), ad(tr, q, start, start))  # ignored by AD
    for kind in ("compressed", "random_markers"):
        torch.manual_seed(0)
        m = ADTransformer(tiny_cfg(model=kind, tf_n_embd=64, tf_n_head=4)).eval()
        names = {n for n, _ in m.named_parameters() if "marker" in n}
        assert names == {"start_marker", "end_marker"}
        assert 0.01 < m.start_marker.std().item() < 0.03  # N(0, 0.02)
        tr, q = random_transitions(3, 11, gen)
        none = torch.zeros(3, 11, dtype=torch.bool)
        with torch.no_grad():
            assert torch.equal(m(tr, q), m(tr, q, none, none))
            assert not torch.allclose(m(tr, q), m(tr, q, start, none))
            assert not torch.allclose(m(tr, q, none, start), m(tr, q, start, none))


def test_context_of_zero_and_too_long():
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg()).eval()
    q = torch.tensor([[4, 4], [0, 8]])
    assert m(torch.zeros(2, 0, 6, dtype=torch.long), q).shape == (2, 5)
    with pytest.raises(BadInput, match="L <= 11"):
        m(torch.zeros(2, 12, 6, dtype=torch.long), q)


# --------------------------------------------------------------------------- windows
def slow_windows(arrays: dict[str, np.ndarray], n_transit: int, start=None, end=None) -> list[tuple]:
    """Every window by a Python loop over (goal, stream, first step) from time-major arrays [G, T, S, ...]."""
    out = []
    G, T, S = arrays["actions"].shape
    for g in range(G):
        for s in range(S):
            for i in range(T - n_transit + 1):
                rows = [(*arrays["states"][g, t, s], arrays["actions"][g, t, s], int(arrays["rewards"][g, t, s]), *arrays["next_states"][g, t, s])
                        for t in range(i, i + n_transit)]
                marks = None if start is None else ([bool(start[g * S + s, t]) for t in range(i, i + n_transit - 1)],
                                                    [bool(end[g * S + s, t]) for t in range(i, i + n_transit - 1)])
                out.append((rows[:-1], tuple(rows[-1][:2]), rows[-1][2], marks))
    return out


def test_gather_matches_a_python_loop():
    from fiberlab.distill.windows import Windows, pack_streams

    rng = np.random.default_rng(0)
    G, T, S, n = 2, 9, 3, 4
    arrays = {"states": rng.integers(0, 9, (G, T, S, 2)), "actions": rng.integers(0, 5, (G, T, S)),
              "rewards": rng.integers(0, 2, (G, T, S)).astype(np.float32), "next_states": rng.integers(0, 9, (G, T, S, 2))}
    streams = pack_streams(arrays["states"], arrays["actions"], arrays["rewards"], arrays["next_states"])
    assert streams.dtype == torch.uint8 and streams.shape == (G * S, T, 6)
    start, end = torch.from_numpy(rng.random((G * S, T)) < 0.3), torch.from_numpy(rng.random((G * S, T)) < 0.3)
    w = Windows(streams, n, start, end)
    ref = slow_windows(arrays, n, start.numpy(), end.numpy())
    assert len(w) == len(ref) == G * S * (T - n + 1)
    idx = torch.tensor([0, 5, len(w) - 1, 7, 7, 13])
    b = w.gather(idx)
    assert b.transitions.dtype == torch.long and b.transitions.shape == (6, n - 1, 6)
    for j, k in enumerate(idx.tolist()):
        rows, query, label, (s_ref, e_ref) = ref[k]
        assert b.transitions[j].tolist() == [list(map(int, r)) for r in rows]
        assert tuple(b.query[j].tolist()) == tuple(map(int, query)) and b.target[j].item() == label
        assert b.start[j].tolist() == s_ref and b.end[j].tolist() == e_ref
    every = list(w.batches(4))
    assert [len(x.target) for x in every] == [4] * (len(w) // 4) + ([len(w) % 4] if len(w) % 4 else [])
    assert torch.equal(torch.cat([x.target for x in every]), torch.tensor([r[2] for r in ref]))


def test_sampling_is_seeded_and_uniform():
    from fiberlab.distill.windows import Windows

    w = Windows(torch.zeros(5, 30, 6, dtype=torch.uint8), 10)
    draw = lambda seed: w.rows(torch.randint(len(w), (20_000,), generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    counts = torch.bincount(draw(0)[:, 0] // 30, minlength=5).float()  # windows per stream
    assert (counts / counts.sum() - 0.2).abs().max() < 0.02


def test_load_windows_from_a_history_file(tmp_path):
    from fiberlab.distill.histories import open_history
    from fiberlab.distill.segments import boundaries, segment_mask
    from fiberlab.distill.windows import load_windows
    from fiberlab.envs.darkroom import task_split

    train, test = task_split("darkroom", 0)
    goals = train[:2] + test[:2]
    path = expert_history(tmp_path / "h.hdf5", goals, T=40, S=3)
    cfg = tiny_cfg(model="compressed", n_transit=10, mask_rule="causal", compression_window=3)
    data = load_windows(cfg, path)
    assert data.train_goals == train[:2] and data.test_goals == test[:2]
    assert len(data.train) == 2 * 3 * 31 and len(data.test) == 2 * 1 * 31  # test: stream 0 only
    with open_history(path) as h:
        a = h.stack(data.train_goals, ["states", "actions", "rewards", "next_states", "action_probs"])
    start = np.concatenate([boundaries(segment_mask(a["action_probs"][g], 0.7, 3, "causal"))[0].T for g in range(2)])
    end = np.concatenate([boundaries(segment_mask(a["action_probs"][g], 0.7, 3, "causal"))[1].T for g in range(2)])
    ref = slow_windows(a, 10, start, end)
    idx = torch.tensor([0, 40, 100, len(ref) - 1])
    b = data.train.gather(idx)
    for j, k in enumerate(idx.tolist()):
        rows, query, label, (s_ref, e_ref) = ref[k]
        assert b.transitions[j].tolist() == [list(map(int, r)) for r in rows] and b.target[j].item() == label
        assert tuple(b.query[j].tolist()) == tuple(map(int, query))
        assert b.start[j].tolist() == s_ref and b.end[j].tolist() == e_ref
    assert abs(data.marker_rates["start"] - start.mean()) < 1e-9
    rnd = load_windows(cfg.model_copy(update={"model": "random_markers"}), path)
    assert not torch.equal(rnd.train.start, data.train.start)
    assert torch.equal(rnd.train.start, load_windows(cfg.model_copy(update={"model": "random_markers", "seed": 5}), path).train.start)
    assert load_windows(cfg.model_copy(update={"model": "ad"}), path).train.start is None
    with pytest.raises(BadInput, match="shorter than n_transit=50"):
        load_windows(cfg.model_copy(update={"n_transit": 50}), path)
    only_train = expert_history(tmp_path / "t.hdf5", train[:2], T=20, S=1)
    with pytest.raises(BadInput, match="holds none of the 8 test goals"):
        load_windows(cfg, only_train)


# --------------------------------------------------------------------------- checkpoints
def saved(tmp_path: Path, model: str = "compressed", with_optimizer: bool = True) -> tuple[Path, ADTransformer, torch.optim.Optimizer, ADConfig]:
    from fiberlab.distill.ad_checkpoint import save_ad

    cfg = tiny_cfg(model=model)
    torch.manual_seed(0)
    m = ADTransformer(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    tr, q = random_transitions(4, 11, torch.Generator().manual_seed(0))
    for _ in range(2):
        F.cross_entropy(m(tr, q), torch.zeros(4, dtype=torch.long)).backward()
        opt.step()
    path = save_ad(tmp_path / "m.safetensors", m, cfg, {"step": 2, "env": "darkroom"}, opt if with_optimizer else None,
                   {"step": 2}, {"sampler": torch.Generator().manual_seed(3).get_state()})
    return path, m, opt, cfg


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    from fiberlab.distill.ad_checkpoint import load_ad, read_ad

    path, m, opt, cfg = saved(tmp_path)
    model, cfg2, meta = load_ad(path)
    assert cfg2 == cfg and meta == {"step": 2, "env": "darkroom"} and not model.training
    for (k, a), (k2, b) in zip(m.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    ck = read_ad(path)
    opt2 = torch.optim.AdamW(ck.model.parameters(), lr=5.0)
    ck.load_optimizer(opt2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3 and tuple(s2["param_groups"][0]["betas"]) == (0.9, 0.99)
    for i in s1["state"]:
        for key in s1["state"][i]:
            assert torch.equal(s1["state"][i][key], s2["state"][i][key])
    assert ck.scheduler == {"step": 2} and torch.equal(ck.rng["sampler"], torch.Generator().manual_seed(3).get_state())


def one_line_bad_input(path: Path, match: str | None) -> None:
    from fiberlab.distill.ad_checkpoint import load_ad

    with pytest.raises(BadInput, match=match) as e:
        load_ad(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_bad_checkpoint_files_are_one_bad_input_line(tmp_path):
    from fiberlab.checkpoint.format import (
        read_raw_header,
        read_tensors,
        write_checkpoint,
    )

    path, *_ = saved(tmp_path)
    data = path.read_bytes()
    one_line_bad_input(tmp_path / "missing.safetensors", "no such")
    (tmp_path / "short.safetensors").write_bytes(data[: len(data) - 100])
    one_line_bad_input(tmp_path / "short.safetensors", "corrupt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    one_line_bad_input(tmp_path / "junk.safetensors", "not a fiberlab checkpoint|corrupt")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))  # safetensors, but not ours
    one_line_bad_input(tmp_path / "foreign.safetensors", "not a fiberlab checkpoint")
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a weight byte
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    one_line_bad_input(tmp_path / "flipped.safetensors", "checksum mismatch")

    manifest, tensors = read_raw_header(path).manifest, read_tensors(path)
    write_checkpoint(tmp_path / "policy_kind.safetensors", {**manifest, "kind": "policy"}, tensors)
    one_line_bad_input(tmp_path / "policy_kind.safetensors", "not an AD checkpoint")
    write_checkpoint(tmp_path / "badcfg.safetensors", {**manifest, "config": {**manifest["config"], "tf_n_head": 3}}, tensors)
    one_line_bad_input(tmp_path / "badcfg.safetensors", "config is invalid")
    write_checkpoint(tmp_path / "wider.safetensors", {**manifest, "config": {**manifest["config"], "tf_n_embd": 32}}, tensors)
    one_line_bad_input(tmp_path / "wider.safetensors", "do not match the model")
    write_checkpoint(tmp_path / "extra.safetensors", manifest, {**tensors, "stowaway": torch.zeros(2)})
    one_line_bad_input(tmp_path / "extra.safetensors", "unexpected tensor")
    nan = dict(tensors)
    nan["model/head.bias"] = torch.full_like(nan["model/head.bias"], float("nan"))
    write_checkpoint(tmp_path / "nan.safetensors", manifest, nan)
    one_line_bad_input(tmp_path / "nan.safetensors", "NaN")
    # a checksum recomputed by an editor still has to be ours: drop the optimizer record
    write_checkpoint(tmp_path / "noopt.safetensors", {k: v for k, v in manifest.items() if k != "optimizer"}, tensors)
    one_line_bad_input(tmp_path / "noopt.safetensors", "optimizer")
    header = json.loads(data[8: 8 + struct.unpack("<Q", data[:8])[0]])
    assert json.loads(header["__metadata__"]["fiberlab"])["kind"] == "ad_transformer"
