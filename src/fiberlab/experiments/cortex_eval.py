"""Evaluate a cortex memory stack on a synthetic memory task (cortex spec section 7), over seeds.

Model: ``Embedding(vocab, H) -> stack (pattern, H, num_layers) -> Linear(H, classes)`` on the
LAST step's output. Training: AdamW (lr 1e-3), batch 64, ``epochs`` passes over 80 % of
``samples`` (10 % validation, 10 % test), cross-entropy, gradient norm clipped to 1.0.

Reported accuracy: the TEST accuracy of the parameters from the epoch with the best validation
accuracy (the earliest on ties). Why: a few epochs on 1,600 samples can overfit or oscillate, and
choosing by validation is what one does with a real model; the final epoch's test accuracy is
stored too (``test_acc_final``).

Chunked streaming (``chunk_size``): the sequence is cut into chunks aligned to its END (the first
chunk is the shorter remainder), the stack runs over them one after another carrying its state,
and only the last chunk is run with gradient: earlier chunks run under ``torch.no_grad`` and their
final state is detached. So the loss (at the last step) trains on at most ``chunk_size`` steps of
backpropagation while the forward computation, and hence every output, equals the unchunked one
(for cells whose step-by-step and sequence forms agree). Evaluation uses the same chunking.

Throughput: ``tokens_per_s`` is training tokens (batch x T, all chunks) over the wall time of the
training steps alone (forward, backward, clip, optimizer step; no evaluation).

Results: one JSON per seed, written atomically, under
``<out>/<task>[-<param><value>...]_<pattern>_d<H>_l<N>[_c<chunk>]/seed_<s>.json`` (non-default task
parameters and the chunk size are part of the folder name, so different settings never share it),
and ``summary.json`` there with the mean and 95 % Student-t interval over seeds. A seed whose
JSON already exists with the same settings is read back, not rerun.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fiberlab.atomic import write_json_atomic
from fiberlab.cortex.base import MemoryModule, detach_state
from fiberlab.devices import resolve_device
from fiberlab.errors import BadInput
from fiberlab.experiments.memory_tasks import TASKS, make_task, task_params
from fiberlab.intervals import t_interval

StackBuilder = Callable[..., MemoryModule]  # (pattern, d_hidden, num_layers) -> stack


def default_stack_builder(pattern: str, d_hidden: int, num_layers: int) -> MemoryModule:
    """``fiberlab.cortex.pattern.build_stack`` (imported late: the pattern module builds cells lazily)."""
    from fiberlab.cortex.pattern import build_stack

    return build_stack(pattern, d_hidden, num_layers)


@dataclass
class EvalConfig:
    """One evaluation: a task, a stack, and the training protocol. Serialised into every result."""

    task: str
    pattern: str
    d_hidden: int = 128
    num_layers: int = 3
    seeds: int = 5  # seeds 0 .. seeds-1
    epochs: int = 5
    samples: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    grad_clip: float = 1.0
    chunk_size: int | None = None
    task_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1

    def check(self) -> dict[str, Any]:
        """BadInput with one line naming a bad value; returns the task's resolved parameters."""
        params = task_params(self.task, **self.task_overrides)
        if not isinstance(self.pattern, str) or not self.pattern.strip():
            raise BadInput(f"bad pattern {self.pattern!r}: a non-empty pattern string such as 'AgSA' is allowed")
        for name in ("d_hidden", "num_layers", "seeds", "epochs", "batch_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInput(f"bad value {value!r} for {name}: a positive integer is allowed")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 10:
            raise BadInput(f"bad value {self.samples!r} for samples: an integer >= 10 (80/10/10 split) is allowed")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise BadInput(f"bad value {self.chunk_size!r} for chunk_size: a positive integer (or none) is allowed")
        if not self.lr > 0 or not self.grad_clip > 0:
            raise BadInput(f"bad lr {self.lr!r} or grad_clip {self.grad_clip!r}: positive numbers are allowed")
        resolve_device(self.device)  # the one device rule: auto, cpu, cuda, cuda:N
        return params

    def run_name(self) -> str:
        """``<task>[-<param><value>...]_<pattern>_d<H>_l<N>[_c<chunk>]``."""
        defaults = TASKS[self.task].defaults
        extra = "".join(f"-{k}{v}" for k, v in sorted(self.task_overrides.items()) if defaults.get(k) != v)
        pattern = self.pattern.replace(",", "-").replace(" ", "")
        chunk = f"_c{self.chunk_size}" if self.chunk_size else ""
        return f"{self.task}{extra}_{pattern}_d{self.d_hidden}_l{self.num_layers}{chunk}"


class SequenceClassifier(nn.Module):
    """Embedding -> memory stack -> linear readout of the last step."""

    def __init__(self, stack: MemoryModule, vocab_size: int, num_classes: int, d_hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_hidden)
        self.stack = stack
        self.head = nn.Linear(d_hidden, num_classes)

    def forward(self, tokens: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Logits ``[B, classes]`` from tokens ``[B, T]``; see the module docstring for chunking."""
        T = tokens.shape[1]
        if not chunk_size or chunk_size >= T:
            y, _ = self.stack(self.embed(tokens))
            return self.head(y[:, -1])
        first = T % chunk_size or chunk_size  # chunks end-aligned: the last one is a full chunk
        bounds = [0, *range(first, T + 1, chunk_size)]
        state = None
        with torch.no_grad():  # every chunk but the last: state only, no graph
            for lo, hi in itertools.pairwise(bounds[:-1]):
                _, state = self.stack(self.embed(tokens[:, lo:hi]), state)
        state = None if state is None else detach_state(state)
        y, _ = self.stack(self.embed(tokens[:, bounds[-2]:]), state)
        return self.head(y[:, -1])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def accuracy(model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, chunk_size: int | None, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch], chunk_size).argmax(-1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)


def train_seed(cfg: EvalConfig, seed: int, stack_builder: StackBuilder | None = None) -> dict[str, Any]:
    """Train and test one seed; the returned dict is what ``seed_<s>.json`` holds.

    The seed fixes the data (generator seed), the split, the initial weights and the batch order.
    """
    params = cfg.check()
    device = resolve_device(cfg.device)
    data = make_task(cfg.task, cfg.samples, seed=seed, **cfg.task_overrides)
    x = torch.from_numpy(data.tokens).to(device)
    y = torch.from_numpy(data.labels).to(device)
    n_train, n_val = int(0.8 * cfg.samples), int(0.1 * cfg.samples)
    x_tr, y_tr = x[:n_train], y[:n_train]  # samples are i.i.d. draws: a plain slice is a random split
    x_va, y_va = x[n_train:n_train + n_val], y[n_train:n_train + n_val]
    x_te, y_te = x[n_train + n_val:], y[n_train + n_val:]

    torch.manual_seed(seed)
    stack = (stack_builder or default_stack_builder)(cfg.pattern, cfg.d_hidden, cfg.num_layers)
    model = SequenceClassifier(stack, data.vocab_size, data.num_classes, cfg.d_hidden).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(seed)

    best_val, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    train_seconds, train_tokens = 0.0, 0
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(n_train, generator=order).to(device)
        losses = []
        for i in range(0, n_train, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x_tr[idx], cfg.chunk_size), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds += time.perf_counter() - t0
            train_tokens += idx.numel() * x.shape[1]
            losses.append(loss.item())
        val = accuracy(model, x_va, y_va, cfg.chunk_size)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_acc": val})
        if val > best_val:
            best_val, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
    test_final = accuracy(model, x_te, y_te, cfg.chunk_size)
    model.load_state_dict(best_state)
    test_best = accuracy(model, x_te, y_te, cfg.chunk_size)
    return {
        "config": asdict(cfg),
        "task_params": params,
        "seed": seed,
        "seq_len": int(x.shape[1]),
        "test_acc": test_best,
        "test_acc_final": test_final,
        "best_epoch": best_epoch,
        "best_val_acc": best_val,
        "chance": data.chance,
        "num_classes": data.num_classes,
        "parameters": count_parameters(model),
        "stack_parameters": count_parameters(model.stack),
        "tokens_per_s": train_tokens / train_seconds if train_seconds > 0 else float("nan"),
        "train_seconds": train_seconds,
        "history": history,
        "device": str(device),
        "torch": torch.__version__,
    }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN: one seed has no interval


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95 % t-interval of test accuracy over seeds, with parameters and throughput."""
    first = results[0]
    mean, ci = t_interval([r["test_acc"] for r in results])
    mean_final, ci_final = t_interval([r["test_acc_final"] for r in results])
    return {
        "task": first["config"]["task"], "pattern": first["config"]["pattern"], "task_params": first["task_params"],
        "d_hidden": first["config"]["d_hidden"], "num_layers": first["config"]["num_layers"],
        "seeds": [r["seed"] for r in results], "test_acc": [r["test_acc"] for r in results],
        "acc_mean": mean, "acc_ci95": _finite(ci), "acc_final_mean": mean_final, "acc_final_ci95": _finite(ci_final),
        "chance": first["chance"], "parameters": first["parameters"], "stack_parameters": first["stack_parameters"],
        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in results])), "seq_len": first["seq_len"],
        "config": {k: v for k, v in first["config"].items() if k != "seeds"},
    }


def _same_settings(stored: dict[str, Any], cfg: EvalConfig) -> bool:
    mine = {k: v for k, v in asdict(cfg).items() if k != "seeds"}
    theirs = {k: v for k, v in stored.get("config", {}).items() if k != "seeds"}
    return mine == theirs


def check_config(cfg: EvalConfig, stack_builder: StackBuilder | None = None) -> None:
    """Everything that can be wrong, checked before anything is written: the values, then the
    pattern (by building the stack once)."""
    cfg.check()
    (stack_builder or default_stack_builder)(cfg.pattern, cfg.d_hidden, cfg.num_layers)


def run_eval(cfg: EvalConfig, out: Path | str = "train_dir/cortex_eval", stack_builder: StackBuilder | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every seed (or read back finished ones) and write the per-seed JSONs and ``summary.json``.

    Returns the summary, with ``dir`` (the result folder) and ``reused`` (seeds read back) added.
    """
    check_config(cfg, stack_builder)
    torch.set_num_threads(cfg.threads)
    folder = Path(out) / cfg.run_name()
    results, reused = [], []
    for seed in range(cfg.seeds):
        path = folder / f"seed_{seed}.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                stored = {}
            if _same_settings(stored, cfg):
                results.append(stored)
                reused.append(seed)
                continue
        result = train_seed(cfg, seed, stack_builder)
        write_json_atomic(path, result)
        results.append(result)
        if log:
            log(f"{cfg.run_name()} seed {seed}: test acc {result['test_acc']:.3f} (chance {result['chance']:.3f}), "
                f"{result['tokens_per_s']:,.0f} tokens/s, {result['train_seconds']:.1f} s")
    summary = summarize(results)
    write_json_atomic(folder / "summary.json", summary)
    return {**summary, "dir": str(folder), "reused": reused}
