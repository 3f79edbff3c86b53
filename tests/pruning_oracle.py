"""The test oracle: DataNormSparsifier's masks by a plain sort of all block scores (slow, obvious).

`keep_mask(stable=True)` is the engine's contract (ties pruned lowest index first);
`stable=False` runs the reference's own unstable `torch.sort`, so it reproduces
DataNormSparsifier bit for bit on the running machine, ties included.
"""

import torch
from torch.nn import functional as F


def block_scores(w, block_shape, norm):
    s = w.abs() if norm == "L1" else w * w
    return F.avg_pool2d(s[None, None], block_shape, block_shape, ceil_mode=True)[0, 0]


def expand(pruned_blocks, block_shape, shape):
    """Block mask (rb, nbw) -> element mask of `shape`, partial blocks cropped."""
    bh, bw = block_shape
    full = pruned_blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return full[: shape[0], : shape[1]]


def keep_mask(w, level, block_shape, norm, stable=True):
    """bool (n, d), True = kept: the round(level * blocks) lowest blocks are pruned."""
    s = block_scores(w, block_shape, norm)
    k = round(level * s.numel())
    pruned = torch.zeros(s.numel(), dtype=torch.bool)
    pruned[torch.sort(s.reshape(-1), stable=stable).indices[:k]] = True
    return ~expand(pruned.view(s.shape), block_shape, w.shape)


def prune(w, level, block_shape, norm, signed_zeros=False):
    """A new tensor: `w` where kept; +0.0 where pruned (`signed_zeros`: `w * mask`)."""
    keep = keep_mask(w, level, block_shape, norm)
    return w * keep if signed_zeros else torch.where(keep, w, torch.zeros((), dtype=w.dtype))


def global_prune(ws, level, block_shape, norm):
    """One threshold for all tables: concatenate every block score in table order, stable sort,
    zero the first K blocks -> (pruned tables, blocks lost per table, K)."""
    scores = [block_scores(w, block_shape, norm) for w in ws]
    flat = torch.cat([s.reshape(-1) for s in scores])
    k = round(level * flat.numel())
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    pruned[torch.sort(flat, stable=True).indices[:k]] = True
    out, counts = [], []
    for w, part in zip(ws, pruned.split([s.numel() for s in scores])):
        counts.append(int(part.sum()))
        keep = ~expand(part.view(scores[len(out)].shape), block_shape, w.shape)
        out.append(torch.where(keep, w, torch.zeros(())))
    return out, counts, k
