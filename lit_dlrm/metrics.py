"""Click-prediction metrics, computed from logits, exact over a whole split (DDP included).

``ClickMetrics`` bundles what recsys papers and the reference benchmark report:

- ``auc``: area under the ROC curve (exact by default; binned for the cheap training curve);
- ``accuracy``, ``precision``, ``recall``, ``f1`` at probability threshold 0.5;
- ``log_loss``: mean binary cross-entropy, computed from the logits (stable at p = 0 or 1);
- ``ne``: normalized entropy, the log loss divided by the entropy of the split's positive rate
  (He et al. 2014): 1.0 is no better than always predicting the positive rate;
- ``calibration``: mean predicted probability / positive rate (1.0 is calibrated).

All states are sums or concatenations that torchmetrics reduces across processes, so the values
under DDP equal those of one process over the same rows. Small batches are buffered and handed
to torchmetrics in bulk (every ``flush_every`` samples): exact all the same, but the per-update
overhead of six metrics is paid once per many training steps instead of at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)


class LogLossStats(Metric):
    """Sums from which log loss, normalized entropy and calibration follow."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("loss_sum", "label_sum", "prob_sum", "count"):
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, logits: Tensor, labels: Tensor) -> None:
        logits, labels = logits.double(), labels.double()
        self.loss_sum += F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        self.label_sum += labels.sum()
        self.prob_sum += torch.sigmoid(logits).sum()
        self.count += labels.numel()

    def compute(self) -> dict[str, Tensor]:
        log_loss = self.loss_sum / self.count
        rate = (self.label_sum / self.count).clamp(1e-12, 1 - 1e-12)
        entropy = -(rate * torch.log(rate) + (1 - rate) * torch.log(1 - rate))
        return {
            "log_loss": log_loss,
            "ne": log_loss / entropy,
            "calibration": (self.prob_sum / self.count) / rate,
        }


class ClickMetrics(nn.Module):
    """All click metrics of one split: ``update(logits, labels)``, ``compute() -> dict``, ``reset``.

    Args:
        auc_bins: ``None`` for the exact AUC (keeps every prediction), or a number of thresholds
            for a constant-memory approximation (used for the running training curve).
        flush_every: buffer this many samples before updating the metrics.
    """

    def __init__(self, auc_bins: int | None = None, flush_every: int = 65536) -> None:
        super().__init__()
        self.flush_every = flush_every
        self._buffer: list[tuple[Tensor, Tensor]] = []
        self._buffered = 0
        self.thresholded = MetricCollection(
            {
                "auc": BinaryAUROC(thresholds=auc_bins),
                "accuracy": BinaryAccuracy(),
                "precision": BinaryPrecision(),
                "recall": BinaryRecall(),
                "f1": BinaryF1Score(),
            }
        )
        self.log_loss = LogLossStats()

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self._buffer.append((logits.detach(), labels.detach()))
        self._buffered += labels.numel()
        if self._buffered >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        logits = torch.cat([b[0] for b in self._buffer])
        labels = torch.cat([b[1] for b in self._buffer])
        self._buffer, self._buffered = [], 0
        # Probabilities, never logits: torchmetrics would guess whether to apply a sigmoid.
        self.thresholded.update(torch.sigmoid(logits.float()), labels.long())
        self.log_loss.update(logits, labels)

    def compute(self) -> dict[str, float]:
        self._flush()
        values = {**self.thresholded.compute(), **self.log_loss.compute()}
        return {name: float(value) for name, value in values.items()}

    def reset(self) -> None:
        self._buffer, self._buffered = [], 0
        self.thresholded.reset()
        self.log_loss.reset()
