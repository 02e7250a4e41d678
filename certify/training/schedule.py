"""Schedules of certified training, per optimiser step (Shi et al. 2021, "Fast certified robust training
with short warmup"; the smoothed ramp is auto_LiRPA's ``SmoothedScheduler``).

Epochs ``[0, warmup)`` train at eps 0. Over the next ``ramp`` epochs eps grows from 0 to the target:
``eps(t) = a t^beta`` up to the switch point ``mid`` (a fraction of the ramp), then linearly, with ``a``
chosen so that the two pieces meet with the same slope:

    a = E / ((T - t_m) beta t_m^(beta-1) + t_m^beta),    t in steps since the ramp began, T its length.

A slow polynomial start keeps the bounds from exploding while the network is still loose; the linear end
reaches the target in finite time. After the ramp, eps stays at the target. ``progress`` (0 -> 1 over the
ramp) drives the other coefficients: kappa (natural-loss weight) ``kappa_start -> kappa``, CROWN-IBP's beta
1 -> 0, the regularisers' intensity ``lambda (1 - eps_t / eps)``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpsSchedule:
    eps: float
    warmup_epochs: int
    ramp_epochs: int
    steps_per_epoch: int
    mid: float = 0.25
    beta: float = 4.0

    def eps_at(self, step: int) -> float:
        """eps for optimiser step ``step`` (counted from 0 over the whole run)."""
        t = step - self.warmup_epochs * self.steps_per_epoch
        T = self.ramp_epochs * self.steps_per_epoch
        if t <= 0 or self.eps == 0:
            return 0.0
        if t >= T:
            return self.eps
        t_m = max(1.0, self.mid * T)
        a = self.eps / ((T - t_m) * self.beta * t_m ** (self.beta - 1) + t_m ** self.beta)
        if t < t_m:
            return a * t ** self.beta
        e_m = a * t_m ** self.beta
        return min(self.eps, e_m + (self.eps - e_m) * (t - t_m) / (T - t_m))

    def progress(self, step: int) -> float:
        """Fraction of the ramp done at ``step`` (0 during warm-up, 1 after the ramp)."""
        t = step - self.warmup_epochs * self.steps_per_epoch
        T = max(1, self.ramp_epochs * self.steps_per_epoch)
        return min(1.0, max(0.0, t / T))
