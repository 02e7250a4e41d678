"""Every knob of ``certify train``, with the published defaults (see ``losses``, ``schedule``,
``regularisers`` for what each one does)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class TrainOptions:
    """Adam with learning rate ``lr`` (times ``lr_decay`` at each fraction of ``lr_milestones`` of the run)
    for ``epochs`` passes of shuffled batches of ``batch_size``, gradients clipped to norm ``grad_clip``.

    Certified losses (``losses.CERTIFIED``) train at eps 0 for ``warmup_epochs``, ramp eps up to ``eps``
    over ``ramp_epochs`` (``None``: Shi et al.'s 10 for MNIST, at most half of the remaining epochs), start
    from the IBP initialisation (``ibp_init``) and add the warm-up regularisers (``reg_lambda``, ``reg_tol``)
    during the ramp (Shi et al. 2021)."""

    loss: str = "ce"
    eps: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    lr: float | None = None  # None: 5e-4 for certified losses (Shi et al.), 1e-3 (Adam's default) otherwise
    lr_decay: float = 0.2
    lr_milestones: tuple[float, ...] = (0.75, 0.9)
    grad_clip: float = 10.0
    warmup_epochs: int = 1
    ramp_epochs: int | None = None
    kappa: float = 0.0  # natural-loss weight at the end of the ramp (ibp, crown-ibp)
    kappa_start: float = 0.0  # ... and at its start: 0 -> 0 is Shi et al.'s robust loss alone, Gowal et al. 1 -> 0.5
    sabr_lambda: float = 0.4
    alpha: float = 0.5  # cc-ibp / mtl-ibp: weight of the IBP part
    loss_fusion: bool = False  # crown-ibp: one CROWN row bounding the loss (Xu et al. 2020) instead of K - 1 margins
    pgd_steps: int = 10
    attack_steps: int = 1
    noise_sigma: float = 0.0
    reg_lambda: float = 0.5
    reg_tol: float = 0.5
    ibp_init: bool = True
    clip: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        from .losses import LOSSES

        if self.loss not in LOSSES:
            raise UsageError(f"--loss: expected one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError(f"epochs and batch size must be positive, got {self.epochs} and {self.batch_size}")
        for name in ("learning_rate", "grad_clip"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise UsageError(f"--{name.replace('_', '-')}: expected a positive number, got {v}")
        for name in ("eps", "noise_sigma", "reg_lambda", "reg_tol", "kappa", "kappa_start"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UsageError(f"--{name.replace('_', '-')}: expected a non-negative number, got {v}")
        for name in ("sabr_lambda", "alpha", "kappa", "kappa_start", "lr_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"--{name.replace('_', '-')}: expected a number in [0, 1], got {getattr(self, name)}")
        if self.warmup_epochs < 0 or (self.ramp_epochs is not None and self.ramp_epochs < 0):
            raise UsageError("--warmup-epochs and --ramp-epochs must be non-negative")
        if self.pgd_steps < 1 or self.attack_steps < 1:
            raise UsageError("--pgd-steps and --attack-steps must be positive")
        if self.loss == "noise" and self.noise_sigma <= 0:
            raise UsageError("--loss noise needs --noise-sigma S > 0")
        if self.loss in ("pgd", "ibp", "crown-ibp", "sabr", "cc-ibp", "mtl-ibp") and self.eps <= 0:
            raise UsageError(f"--loss {self.loss} needs --eps E > 0 (the training radius, in pixel units)")
        if not self.clip[0] < self.clip[1]:
            raise UsageError(f"--clip: LO must be below HI, got {self.clip}")

    @property
    def learning_rate(self) -> float:
        from .losses import CERTIFIED

        return self.lr if self.lr is not None else (5e-4 if self.loss in CERTIFIED else 1e-3)

    @property
    def ramp(self) -> int:
        """Epochs of the eps ramp actually used."""
        if self.ramp_epochs is not None:
            return self.ramp_epochs
        return min(10, max(1, (self.epochs - self.warmup_epochs) // 2))
