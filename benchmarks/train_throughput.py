"""Training throughput: ``trainer.fit`` of ``DLRMModule`` against a plain PyTorch loop.

Same model (the Kaggle architecture, tables capped at ``--cap`` rows), same optimiser (SGD lr 0.1
with sparse embedding gradients, the reference recipe), same in-memory batches, same number of
steps, in the same process, alternating which goes first. Lightning's side includes everything
``DLRMModule`` does per step (loss logging and the running training metrics). Reported: samples/s
of each and the ratio; the target is that Lightning costs at most 10%.

    python -m benchmarks.train_throughput [--scale small]
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
import torch.nn.functional as F

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


def plain_loop(module: DLRMModule, batches: list[tuple]) -> float:
    """Seconds for one pass of a hand-written training loop over ``batches``."""
    model = module.model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=module.hparams.lr)
    start = time.perf_counter()
    for dense, sparse, labels in batches:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class Timer(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def lightning_fit(module: DLRMModule, batches: list[tuple]) -> float:
    """Seconds of ``trainer.fit`` over ``batches`` (one epoch, no validation, no checkpoint)."""
    timer = Timer()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.seconds


def measure(batch_size: int, steps: int, cap: int, rounds: int = 3) -> dict:
    sizes = [min(n, cap) for n in KAGGLE_TABLE_SIZES]
    batches = random_batches(sizes, batch_size, steps)
    best = {"lightning": float("inf"), "plain": float("inf")}
    for r in range(rounds):  # alternate the order; keep each side's best round
        torch.manual_seed(0)
        module = DLRMModule(sizes, optimizer="sgd", lr=0.1)
        for name in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            run = plain_loop if name == "plain" else lightning_fit
            best[name] = min(best[name], run(module, batches))
    samples = batch_size * steps
    return {
        "batch_size": batch_size,
        "steps": steps,
        "lightning_samples_s": samples / best["lightning"],
        "plain_samples_s": samples / best["plain"],
        "lightning_over_plain": best["plain"] / best["lightning"],
    }


# scale: (table cap, batch sizes, steps at batch 128; a quarter of them at 2048). Enough steps
# that the once-per-epoch costs (the epoch-end metrics) weigh as little as in a real epoch.
SCALES = {
    "tiny": (2_000, [128], 20),
    "small": (100_000, [128, 2048], 1200),
    "kaggle": (100_000, [128, 2048], 2000),
}


def run(scale: str = "small") -> list[dict]:
    """Rows for benchmarks/run.py: Lightning vs the plain loop, per batch size."""
    cap, batch_sizes, steps = SCALES[scale]
    rows = []
    for batch_size in batch_sizes:
        m = measure(batch_size, steps if batch_size <= 128 else steps // 4, cap)
        rows.append(
            {
                "stage": f"train batch {batch_size}",
                "unit": "samples/s",
                "lit_dlrm": m["lightning_samples_s"],
                "reference": m["plain_samples_s"],
                "ratio": m["lightning_over_plain"],
                "note": f"trainer.fit vs a plain PyTorch loop, tables capped at {cap:,}, SGD, "
                f"{m['steps']} steps",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    args = parser.parse_args(argv)
    for row in run(args.scale):
        print(
            f"{row['stage']}: lightning {row['lit_dlrm']:.0f} samples/s, "
            f"plain loop {row['reference']:.0f}, ratio {row['ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
