"""``fiberlab ad train``: distill a history file into an AD-family transformer.

The loop, top to bottom (DICP's recipe):

1. data: the train and test windows of the file (:func:`fiberlab.distill.windows.load_windows`);
2. model: :class:`~fiberlab.distill.model.ADTransformer` seeded with ``cfg.seed``; AdamW(lr,
   (beta1, beta2), weight_decay);
3. each step: ``batch_size`` windows drawn uniformly over all train windows (a seeded
   ``torch.Generator``), cross-entropy at the query position against the logged action, gradient
   norm clipped to ``grad_clip``, learning rate = linear warm-up then cosine decay to 0 at
   ``train_steps`` (:func:`learning_rate`);
4. every ``eval_interval`` steps and at the end: test loss and accuracy over ALL test windows,
   weighted by count (:func:`evaluate_windows`), and the train loss/accuracy of the interval; one
   JSON line in ``metrics.jsonl`` and one plain progress line; ``checkpoints/best.safetensors``
   when the test accuracy is the best so far, ``checkpoints/last.safetensors`` always (with the
   optimizer, the step and the RNG states, so a rerun resumes where it stopped; a finished run is
   skipped).

Run folder: ``<train_dir>/<cfg.run_name(env)>/`` (env, model and seed in the name: different models
never share one), holding ``config.json`` (the config, the dataset, its segment settings and what
was read from it), ``metrics.jsonl`` and ``checkpoints/``.

Determinism: the sampler, the dropout draws (the global torch generator, forked so the caller's is
untouched) and the initial weights are seeded; a resumed run restores all generator states, so on
the same machine and thread count it continues bit for bit as if it had not stopped.

Speed on the CPU (``benchmarks/ad.py``): each step runs in slices of ``MICRO_BATCH`` windows (the
same gradient; the activations stay in cache), glibc is told to keep freed memory
(:func:`fiberlab.runtime.keep_freed_memory`: no page faults for the same activations every step) and denormal
floats are flushed to zero while training (a sharp attention softmax otherwise makes the attention
kernel 3x slower). The model's own choices are in ``fiberlab.distill.model``.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fiberlab.atomic import write_json_atomic, write_text_atomic
from fiberlab.checkpoint.format import read_header
from fiberlab.devices import resolve_device
from fiberlab.distill.ad_checkpoint import read_ad, save_ad
from fiberlab.distill.config import ADConfig
from fiberlab.distill.model import ADTransformer
from fiberlab.distill.windows import ADData, WindowBatch, Windows, load_windows
from fiberlab.errors import BadInput
from fiberlab.runtime import keep_freed_memory

MICRO_BATCH = 256  # windows per forward/backward pass inside one optimizer step (see train_step)
EVAL_BATCH = 1024  # windows per forward pass when evaluating
# settings that do not change what a run computes: a rerun may differ in these and still resume
_RESUME_FREE = ("device", "torch_threads", "train_dir", "run")


@dataclass
class ADTrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_test_accuracy: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl rows
    skipped: bool = False  # the run had already finished: nothing was trained


def learning_rate(cfg: ADConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based):

        warm-up (step < w):   lr * (step + 1) / w
        cosine  (step >= w):  lr * (1 + cos(pi * (step - w) / (train_steps - w))) / 2

    so it rises linearly to ``lr`` over ``warmup_steps`` and decays to 0 at ``train_steps``."""
    w, n = cfg.warmup_steps, cfg.train_steps
    if step < w:
        return cfg.lr * (step + 1) / w
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, n - w)))


def run_dir_of(cfg: ADConfig, env: str) -> Path:
    return Path(cfg.train_dir) / cfg.run_name(env)


def run_finished(run_dir: str | Path, cfg: ADConfig) -> bool:
    """Whether ``run_dir`` holds a finished run: its last checkpoint's step is ``cfg.train_steps``
    (read from the header only) and a best checkpoint exists."""
    ckpt = Path(run_dir) / "checkpoints"
    if not (ckpt / "best.safetensors").is_file() or not (ckpt / "last.safetensors").is_file():
        return False
    try:
        meta = read_header(ckpt / "last.safetensors").get("meta", {})
    except BadInput:
        return False
    return isinstance(meta, dict) and int(meta.get("step", -1)) >= cfg.train_steps


def evaluate_windows(model: ADTransformer, windows: Windows, batch_size: int = EVAL_BATCH) -> tuple[float, float, int]:
    """(loss, accuracy, n) over EVERY window of ``windows``, in eval mode: the sums of per-window
    cross-entropies and hits divided by the number of windows (so a short last batch weighs by
    its count, not as a whole batch)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=windows.device)
    hits = torch.zeros((), dtype=torch.int64, device=windows.device)
    try:
        with torch.no_grad():
            for b in windows.batches(batch_size):
                logits = model(b.transitions, b.query, b.start, b.end)
                loss_sum += F.cross_entropy(logits.float(), b.target, reduction="sum").double()
                hits += (logits.argmax(-1) == b.target).sum()
    finally:
        model.train(was_training)
    n = len(windows)
    return float(loss_sum) / n, float(hits) / n, n


def train_step(model: ADTransformer, batch: WindowBatch, optimizer: torch.optim.Optimizer, grad_clip: float,
               micro_batch: int = MICRO_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``batch``: mean cross-entropy at the query position, clipped gradient.

    The batch is run in slices of ``micro_batch`` windows whose summed losses are divided by the
    whole batch size, so the gradient is the batch mean exactly as in one pass (up to float
    summation order); a slice's activations stay in cache, which makes the step faster on a CPU.
    Returns (loss sum, hit count) as tensors (no device sync here).
    """
    n = batch.target.shape[0]
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=batch.target.device)
    hits = torch.zeros((), dtype=torch.int64, device=batch.target.device)
    for lo in range(0, n, micro_batch):
        sl = slice(lo, lo + micro_batch)
        start = None if batch.start is None else batch.start[sl]
        end = None if batch.end is None else batch.end[sl]
        logits = model(batch.transitions[sl], batch.query[sl], start, end)
        loss = F.cross_entropy(logits, batch.target[sl], reduction="sum")
        (loss / n).backward()
        loss_sum += loss.detach()
        hits += (logits.detach().argmax(-1) == batch.target[sl]).sum()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss_sum, hits


def _rng_states(sampler: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state(), "sampler": sampler.get_state()}
    if device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def _restore_rng(states: dict[str, torch.Tensor], sampler: torch.Generator, device: torch.device, where: Path) -> None:
    try:
        torch.set_rng_state(states["torch_cpu"])
        sampler.set_state(states["sampler"])
        if device.type == "cuda" and "torch_cuda" in states:
            torch.cuda.set_rng_state(states["torch_cuda"], device)
    except (KeyError, RuntimeError) as e:
        raise BadInput(f"{where}: its RNG states cannot be restored ({e.__class__.__name__}): delete it to start the run again") from None


def _run_record(cfg: ADConfig, data: ADData) -> dict[str, Any]:
    """config.json: the config, the dataset and its segment settings, and what was read from it."""
    return {
        "config": cfg.model_dump(mode="json"),
        "env": data.env,
        "dataset": str(Path(data.path).resolve()),
        "segments": {"on_policy_threshold": cfg.on_policy_threshold, "compression_window": cfg.compression_window,
                     "mask_rule": cfg.mask_rule, "markers": cfg.model != "ad", "random": cfg.model == "random_markers"},
        "data": data.describe() | {"dataset": str(Path(data.path).resolve())},
    }


def _check_same_run(path: Path, cfg: ADConfig, dataset: str) -> None:
    """A rerun into an existing run folder must describe the same computation (else BadInput)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # unreadable: rewritten below
    before, now = old.get("config", {}), cfg.model_dump(mode="json")
    for key in sorted(set(before) | set(now)):
        if key not in _RESUME_FREE and before.get(key) != now.get(key):
            raise BadInput(f"{path.parent}: holds a run with {key}={before.get(key)!r}, not {now.get(key)!r}: "
                           f"choose another run= or train_dir=, or delete that folder")
    if old.get("dataset") not in (None, dataset):
        raise BadInput(f"{path.parent}: holds a run on dataset {old.get('dataset')}, not {dataset}: "
                       f"choose another run= or train_dir=, or delete that folder")


def _read_rows(path: Path, up_to: int) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if int(row.get("step", 0)) <= up_to:
                rows.append(row)
    return rows


def _progress_line(cfg: ADConfig, row: dict[str, Any]) -> str:
    return (f"[ad {row['run']}] step {row['step']}/{cfg.train_steps}  lr {row['lr']:.2e}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  |  "
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.3f} (best {row['best_test_accuracy']:.3f})  "
            f"{row['steps_per_second']:.2f} steps/s")


def train_ad(cfg: ADConfig, dataset: str | Path, *, progress: bool = True,
             on_eval: Callable[[dict[str, Any]], None] | None = None) -> ADTrainResult:
    """Train (or resume, or skip when finished) the run of ``cfg`` on the history file ``dataset``.

    ``progress``: print one plain line per evaluation. ``on_eval(row)`` is called after each
    evaluation, once its metrics row and checkpoints are on disk (an exception raised there stops
    the run: the next call resumes from the last checkpoint)."""
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    if device.type == "cpu":
        keep_freed_memory()
    # flush denormals to zero: a sharp attention softmax produces exp(-large) values below 1e-38,
    # which the CPU handles in microcode, 3x slower for the whole attention kernel (measured)
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _train(cfg, Path(dataset), device, progress, on_eval)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def _train(cfg: ADConfig, dataset: Path, device: torch.device, progress: bool,
           on_eval: Callable[[dict[str, Any]], None] | None) -> ADTrainResult:
    from fiberlab.distill.histories import open_history

    with open_history(dataset) as h:  # metadata only: a finished run is skipped without reading the data
        env = h.env
    resolved = str(dataset.resolve())
    run_dir = run_dir_of(cfg, env)
    ckpt_dir = run_dir / "checkpoints"
    best_path, last_path, metrics_path = ckpt_dir / "best.safetensors", ckpt_dir / "last.safetensors", run_dir / "metrics.jsonl"
    if (run_dir / "config.json").is_file():
        _check_same_run(run_dir / "config.json", cfg, resolved)
    if run_finished(run_dir, cfg):
        meta = read_header(last_path).get("meta", {})
        return ADTrainResult(run_dir, best_path, last_path, meta.get("best_test_accuracy"), _read_rows(metrics_path, cfg.train_steps), skipped=True)

    data = load_windows(cfg, dataset, device)
    record = _run_record(cfg, data)
    if not (run_dir / "config.json").is_file():
        write_json_atomic(run_dir / "config.json", record)

    torch.manual_seed(cfg.seed)
    model = ADTransformer(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    sampler = torch.Generator(device=device)
    sampler.manual_seed(cfg.seed)
    step, best_acc, best_step = 0, None, None
    if last_path.is_file():
        ck = read_ad(last_path, device)
        model.load_state_dict(ck.model.state_dict())
        ck.load_optimizer(optimizer)
        _restore_rng(ck.rng, sampler, device, last_path)
        step = int(ck.meta.get("step", 0))
        best_acc, best_step = ck.meta.get("best_test_accuracy"), ck.meta.get("best_step")
    rows = _read_rows(metrics_path, step)
    write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))  # drop rows past the checkpoint

    meta_base = {"env": data.env, "run": cfg.run_name(data.env), "dataset": record["dataset"], "marker_rates": data.marker_rates,
                 "compression_ratio": data.compression_ratio, "train_goals": data.train_goals, "test_goals": data.test_goals}
    model.train()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), dtype=torch.int64, device=device)
    seen, t0 = 0, time.perf_counter()
    while step < cfg.train_steps:
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = data.train.sample(cfg.batch_size, sampler)
        l, h = train_step(model, batch, optimizer, cfg.grad_clip)
        loss_sum += l
        hits += h
        seen += cfg.batch_size
        step += 1
        if step % cfg.eval_interval and step != cfg.train_steps:
            continue
        elapsed = time.perf_counter() - t0
        test_loss, test_acc, n_test = evaluate_windows(model, data.test)
        if best_acc is None or test_acc > best_acc:
            best_acc, best_step = test_acc, step
        row = {"step": step, "run": cfg.run_name(data.env), "model": cfg.model, "seed": cfg.seed, "lr": lr,
               "train_loss": float(loss_sum) / seen, "train_accuracy": float(hits) / seen, "train_windows": seen,
               "test_loss": test_loss, "test_accuracy": test_acc, "test_windows": n_test,
               "best_test_accuracy": best_acc, "best_step": best_step,
               "steps_per_second": (seen / cfg.batch_size) / max(elapsed, 1e-9), "time": time.time()}
        with open(metrics_path, "a") as f:  # the row first: a crash before the checkpoints replays this interval
            f.write(json.dumps(row) + "\n")
        meta = {**meta_base, "step": step, "test_loss": test_loss, "test_accuracy": test_acc,
                "best_test_accuracy": best_acc, "best_step": best_step}
        if best_step == step:
            save_ad(best_path, model, cfg, meta)
        save_ad(last_path, model, cfg, meta, optimizer, {"step": step, "schedule": "warmup_cosine"}, _rng_states(sampler, device))
        rows.append(row)
        if progress:
            print(_progress_line(cfg, row), flush=True)
        if on_eval is not None:
            on_eval(row)
        loss_sum.zero_()
        hits.zero_()
        seen, t0 = 0, time.perf_counter()
    return ADTrainResult(run_dir, best_path, last_path, best_acc, rows)
