"""Click-prediction metrics, computed from logits, exact over a whole split (DDP included).

``ClickMetrics`` bundles what recsys papers and the reference benchmark report:

- ``auc``: area under the ROC curve (exact by default; binned for the cheap training curve);
- ``accuracy``, ``precision``, ``recall``, ``f1`` at probability threshold 0.5;
- ``log_loss``: mean binary cross-entropy, computed from the logits (stable at p = 0 or 1);
- ``ne``: normalized entropy, the log loss divided by the entropy of the split's positive rate
  (He et al. 2014): 1.0 is no better than always predicting the positive rate;
- ``calibration``: mean predicted probability / positive rate (1.0 is calibrated).

All states are sums or concatenations that torchmetrics reduces across processes, so the values
under DDP equal those of one process over the same rows.
"""

from __future__ import annotations

import math

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
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

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
    """All click metrics of one split: ``update(logits, labels)``, ``compute() -> dict``, ``reset()``.

    Args:
        auc_bins: ``None`` for the exact AUC (keeps every prediction), or a number of thresholds
            for a constant-memory approximation (used for the running training curve).
    """

    def __init__(self, auc_bins: int | None = None) -> None:
        super().__init__()
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
        # Probabilities, never logits: torchmetrics would guess whether to apply a sigmoid.
        self.thresholded.update(torch.sigmoid(logits.float()), labels.long())
        self.log_loss.update(logits, labels)

    def compute(self) -> dict[str, float]:
        values = {**self.thresholded.compute(), **self.log_loss.compute()}
        return {name: float(value) for name, value in values.items()}

    def reset(self) -> None:
        self.thresholded.reset()
        self.log_loss.reset()


def binary_entropy(rate: float) -> float:
    """Entropy (nats) of a Bernoulli(rate): the log loss of always predicting ``rate``."""
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
