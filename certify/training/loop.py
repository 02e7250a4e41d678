"""The training loop shared by every loss, and the per-epoch evaluation a training user watches."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CertifyError
from .attack import pgd_ce
from .bounds import BoundModel
from .losses import CERTIFIED, LOSSES, Step
from .options import TrainOptions
from .regularisers import ibp_init
from .schedule import EpsSchedule


@dataclass
class EpochStats:
    epoch: int
    eps: float  # eps at the end of the epoch
    loss: float
    train_acc: float
    time_s: float  # training time of the epoch (evaluation excluded)
    lr: float
    eval: dict[str, float] = field(default_factory=dict)  # clean / pgd / ibp / crown accuracies

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "eps": self.eps, "loss": self.loss, "train_acc": self.train_acc,
                "time_s": self.time_s, "lr": self.lr, **self.eval}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochStats":
        """The inverse of ``to_dict`` (resumed runs)."""
        keys = ("epoch", "eps", "loss", "train_acc", "time_s", "lr")
        return cls(**{k: d[k] for k in keys}, eval={k: v for k, v in d.items() if k not in keys})


@dataclass
class EvalSet:
    """A held-out slice, certified each epoch at ``eps`` by ``methods`` (sound backends' bounds)."""

    x: np.ndarray
    y: np.ndarray
    eps: float
    methods: Sequence[str] = ("ibp", "crown")
    pgd_steps: int = 20


def keep_freed_memory() -> None:
    """Ask glibc's allocator to keep freed memory mapped (no ``mmap`` for large blocks, no trimming).

    A training step allocates and frees the same large tensors every batch (CROWN-IBP's coefficients are
    ``[B, K, *layer]``); by default glibc returns each one to the system and page-faults it back on the next
    batch. Measured on the CNN3 step: plain training 8.7 -> 6.0 ms, CROWN-IBP 257 -> 183 ms. Memory stays at
    the peak of one step. A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    mallopt(M_TOP_PAD, 1 << 26)


def _tensor(x: np.ndarray, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1, *shape).to(device)


def train(module: nn.Module, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...],
          options: TrainOptions, *, evaluation: EvalSet | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          on_batch: Callable[[int, int, float], None] | None = None,
          resume: dict[str, Any] | None = None,
          save: Callable[[list[EpochStats], dict[str, Any]], None] | None = None) -> list[EpochStats]:
    """Train ``module`` in place with ``options.loss``; returns the per-epoch statistics.

    ``on_batch(step_in_epoch, steps_per_epoch, eps)`` and ``on_epoch(stats)`` report progress; ``save(history,
    state)`` is called after every epoch with a resumable state, which ``resume`` takes back (same data and
    options: the run continues as if it had not stopped)."""
    keep_freed_memory()
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    xt, yt = _tensor(x, input_shape, device), torch.as_tensor(y, dtype=torch.long).to(device)
    if xt.min() < options.clip[0] or xt.max() > options.clip[1]:
        raise CertifyError(f"training data spans [{float(xt.min()):g}, {float(xt.max()):g}], outside the domain "
                           f"--clip {options.clip[0]:g},{options.clip[1]:g} that eps is measured in")
    loss_fn = LOSSES[options.loss]
    certified = options.loss in CERTIFIED
    if certified and options.ibp_init and resume is None:
        ibp_init(module)
    module.to(device).train()
    bound = BoundModel(module, input_shape)
    opt = torch.optim.Adam(module.parameters(), lr=options.learning_rate)
    steps = math.ceil(len(yt) / options.batch_size)
    milestones = sorted({max(1, int(round(f * options.epochs))) for f in options.lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [m * steps for m in milestones], gamma=options.lr_decay)
    eps_sched = EpsSchedule(options.eps, options.warmup_epochs if certified else 0,
                            options.ramp if certified else 0, steps)
    history: list[EpochStats] = []
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        history = [EpochStats.from_dict(h) for h in resume["history"]]
        start = len(history)
    for epoch in range(start, options.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(yt), generator=gen).to(device)
        total, correct, eps = 0.0, 0.0, 0.0
        for i, begin in enumerate(range(0, len(perm), options.batch_size)):
            idx = perm[begin:begin + options.batch_size]
            g_step = epoch * steps + i
            eps = eps_sched.eps_at(g_step) if certified else options.eps
            step = Step(module, bound, xt[idx], yt[idx], eps, eps_sched.progress(g_step) if certified else 1.0,
                        options, gen)
            loss, info = loss_fn(step)
            if not torch.isfinite(loss):
                raise CertifyError(f"epoch {epoch + 1}: the {options.loss} loss became {float(loss)} (eps {eps:.4g}); "
                                   "try a smaller --lr or a longer --ramp-epochs")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), options.grad_clip)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += info.get("acc", 0.0) * len(idx)
            if on_batch is not None:
                on_batch(i + 1, steps, eps)
        stats = EpochStats(epoch + 1, eps, total / len(yt), correct / len(yt), time.perf_counter() - t0,
                           opt.param_groups[0]["lr"])
        if evaluation is not None:
            stats.eval = evaluate(module, evaluation, input_shape, options.clip)
            module.train()
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if save is not None:
            save(history, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                           "history": [h.to_dict() for h in history]})
    module.eval()
    return history


def evaluate(module: nn.Module, data: EvalSet, input_shape: tuple[int, ...],
             clip: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Clean accuracy, PGD accuracy (an upper bound on robust accuracy) and, per method, the certified
    accuracy (a lower bound) of ``module`` on the slice (the shares of ``evaluate_points``)."""
    return {k: float(v.float().mean()) for k, v in evaluate_points(module, data, input_shape, clip).items()}


def evaluate_points(module: nn.Module, data: EvalSet, input_shape: tuple[int, ...],
                    clip: tuple[float, float] = (0.0, 1.0)) -> dict[str, Tensor]:
    """Per point of the slice (boolean ``[N]``): correctly classified (``clean``), still correct after PGD
    (``pgd``), and proved robust by each of ``data.methods``: the sound backends' own row bounds (float64,
    outward rounding, runtime semantics) on the model as ``certify verify`` imports it."""
    from ..bounding import BoundOptions
    from ..budget import Budget
    from ..models import from_module
    from ..registry import get
    from ..spec import robustness

    module.eval()
    device = next(module.parameters()).device
    x = _tensor(data.x, input_shape, device)
    y = torch.as_tensor(data.y, dtype=torch.long, device=device)
    with torch.no_grad():
        out = {"clean": (module(x).argmax(1) == y).cpu()}
    if data.eps > 0:
        adv = pgd_ce(module, x, y, data.eps, data.pgd_steps, 2.5 * data.eps / data.pgd_steps, clip,
                     torch.Generator().manual_seed(0))
        with torch.no_grad():
            out["pgd"] = (module(adv).argmax(1) == y).cpu()
        model = from_module(module.cpu(), input_shape)
        module.to(device)
        spec = robustness(torch.as_tensor(data.x, dtype=torch.float64), torch.as_tensor(data.y), data.eps, "inf",
                          n_classes=model.n_outputs, clip=clip, shape=input_shape)
        for method in data.methods:
            rows = get(method).row_bounds(model, spec, BoundOptions(attack=False), Budget())
            out[method] = (rows > 0).all(1).cpu()
    return out
