"""Training throughput: ``trainer.fit`` of ``DLRMModule`` against a plain PyTorch loop.

Same model (the Kaggle architecture, tables capped at the scale's cap), same initial weights, same
optimiser (SGD lr 0.1 with sparse embedding gradients, the reference recipe), same in-memory
batches, same number of steps, in the same process, ``repeats`` times in ABBA order. The
Lightning side is timed over the whole ``trainer.fit`` call (its setup and teardown included;
building the ``Trainer`` is not), with everything ``DLRMModule`` does per step (loss logging, the
running training metrics); the plain loop from its first step to its last. Same work: both sides
end with the same weights (every parameter's sum within 1e-4 relative). Target: Lightning costs
at most 10% (ratio >= 0.9).

    python -m benchmarks.train_throughput --scale small
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks.harness import (
    OURS,
    REF,
    REPEATS,
    alternate,
    check_same_work,
    compare,
    main_for,
    timed,
)
from lit_dlrm.data.kaggle import KAGGLE_TABLE_SIZES
from lit_dlrm.module import DLRMModule


def random_batches(
    table_sizes: list[int], batch_size: int, steps: int, seed: int = 0
) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(batch_size, 13, generator=g),
            torch.stack([torch.randint(0, n, (batch_size,), generator=g) for n in table_sizes], 1),
            (torch.rand(batch_size, generator=g) < 0.25).float(),
        )
        for _ in range(steps)
    ]


def plain_loop(module: DLRMModule, batches: list[tuple]) -> None:
    """One pass of a hand-written training loop over ``batches``."""
    model = module.model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=module.hparams.lr)
    for dense, sparse, labels in batches:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        loss.backward()
        optimizer.step()


def lightning_fit(module: DLRMModule, batches: list[tuple]):
    """``trainer.fit`` over ``batches`` (one epoch, no validation, no checkpoint); the Trainer is
    built here, the returned callable is what is timed."""
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    return lambda: trainer.fit(module, train_dataloaders=loader)


def sums(module: DLRMModule) -> list[float]:
    return [float(p.detach().double().sum()) for p in module.model.parameters()]


def close(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(a, b))


# scale: (table cap, {batch size: steps}). Enough steps that the once-per-epoch costs (the
# epoch-end metrics) weigh as little as in a real epoch.
SCALES = {
    "tiny": (2_000, {128: 20}),
    "small": (100_000, {128: 1200, 2048: 300}),
    "kaggle": (100_000, {128: 2000, 2048: 500}),
}


def run(scale: str = "small", repeats: int | None = None) -> list[dict]:
    """Lightning vs the plain loop, per batch size; rows of the harness's schema."""
    repeats = repeats or REPEATS[scale]
    cap, steps_of = SCALES[scale]
    sizes = [min(n, cap) for n in KAGGLE_TABLE_SIZES]
    torch.manual_seed(0)
    initial = DLRMModule(sizes, optimizer="sgd", lr=0.1)
    rows = []
    for batch_size, steps in steps_of.items():
        batches = random_batches(sizes, batch_size, steps)

        def ours(batches=batches):
            module = copy.deepcopy(initial)
            fit = lightning_fit(module, batches)
            return timed(fit, lambda _: sums(module))

        def reference(batches=batches):
            module = copy.deepcopy(initial)
            return timed(lambda: plain_loop(module, batches), lambda _: sums(module))

        samples = alternate({OURS: ours, REF: reference}, repeats)
        check_same_work(
            f"train batch {batch_size}", samples, close, "the same weights (sums within 1e-4)"
        )
        for side in samples.values():
            for s in side:
                s.value = batch_size * steps / s.value
        rows.append(
            compare(
                f"train batch {batch_size}",
                "samples/s",
                samples,
                better="higher",
                target=0.9,
                note=f"trainer.fit (whole call) vs a plain PyTorch loop, tables capped at "
                f"{cap:,}, SGD, {steps} steps",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    main_for("train_throughput", run, argv, __doc__.splitlines()[0], sorted(SCALES))


if __name__ == "__main__":
    main()
