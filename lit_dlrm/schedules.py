"""Learning-rate schedules for DLRM: facebookresearch/dlrm's warm-up and polynomial decay.

:class:`WarmupPolyDecay` is dlrm's ``LRPolicyScheduler`` (flags ``--lr-num-warmup-steps``,
``--lr-decay-start-step``, ``--lr-num-decay-steps``) as a torch ``LRScheduler``: it only scales
the optimiser's learning rates, so it works with the sparse gradients of the embedding tables under
any optimiser that takes them. ``DLRMModule`` steps it once per optimiser step, as dlrm does.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

MIN_DECAY_LR = 1e-7  # dlrm's floor during the decay


class WarmupPolyDecay(LRScheduler):
    """dlrm's learning-rate policy, value for value.

    With ``k`` = optimiser steps taken + 1 (dlrm's step count, from 1), each base learning rate
    ``lr`` becomes:

    - ``k < warmup_steps``: ``lr * k / warmup_steps`` (linear warm-up);
    - ``decay_start_step <= k < decay_start_step + decay_steps``: ``max(1e-7, lr * ((decay_steps
      - (k - decay_start_step)) / decay_steps) ** 2)`` (quadratic decay);
    - otherwise, with ``decay_steps == 0``: ``lr``; with ``decay_steps > 0``: the last value the
      warm-up or the decay set, held as dlrm holds it (``lr * (warmup_steps - 1) / warmup_steps``
      between the two phases, ``max(1e-7, lr / decay_steps ** 2)`` after the decay), or ``lr``
      where dlrm would have none yet (no warm-up step taken before the decay starts).

    The value is computed from the step count alone, so a resumed run continues the schedule.

    Raises:
        ValueError: a negative step count, or ``decay_start_step < warmup_steps`` (dlrm refuses it
            too), naming the argument.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        decay_start_step: int = 0,
        decay_steps: int = 0,
        last_epoch: int = -1,
    ) -> None:
        for name, value in (
            ("warmup_steps", warmup_steps),
            ("decay_start_step", decay_start_step),
            ("decay_steps", decay_steps),
        ):
            if value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value}")
        if decay_start_step < warmup_steps:
            raise ValueError(
                f"decay_start_step: the decay must start after the warm-up ends "
                f"(got decay_start_step={decay_start_step} < warmup_steps={warmup_steps})"
            )
        self.warmup_steps, self.decay_start_step, self.decay_steps = (
            warmup_steps,
            decay_start_step,
            decay_steps,
        )
        super().__init__(optimizer, last_epoch)

    def _scale(self, k: int) -> float | None:
        """The scale on the base rate at dlrm step ``k``; None in the decay (floored per rate)."""
        warm, start, decay = self.warmup_steps, self.decay_start_step, self.decay_steps
        if k < warm:
            return k / warm
        if decay == 0:
            return 1.0
        if k < start:  # between the phases: dlrm holds the last warm-up value
            return (warm - 1) / warm if warm > 1 else 1.0
        return None

    def get_lr(self) -> list[float]:
        k = self.last_epoch + 1
        scale = self._scale(k)
        if scale is not None:
            return [base * scale for base in self.base_lrs]
        done = min(k - self.decay_start_step, self.decay_steps - 1)  # held after the decay
        scale = ((self.decay_steps - done) / self.decay_steps) ** 2
        return [max(MIN_DECAY_LR, base * scale) for base in self.base_lrs]
