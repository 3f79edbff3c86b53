"""Synthetic Criteo: Kaggle-shaped raw rows whose true click probability is known.

Rows look like Kaggle `train.txt` before preprocessing: 13 integer features (missing values and a
few negatives at Kaggle-like rates) and 26 categorical features (raw 32-bit hashes drawn Zipf-like
from min(Kaggle count, `max_table_size`) values per feature; some missing). Labels are drawn from
a planted logistic `Teacher` over what a model sees after preprocessing; its probabilities are
kept (`prob.npy`), so the Bayes-optimal AUC and log loss of every split are known
(`binary_metrics`, stored in meta.json by `cached_synthetic`).

Everything is a function of `SyntheticConfig` (seed included), block by block, so the data do not
depend on the machine; changing the teacher's code or defaults changes the data: bump
GENERATOR_VERSION. `write_tsv` writes the rows as Kaggle `train.txt`, and the text path gives back
the same arrays; `python -m lit_dlrm.data.synthetic write` writes one of Kaggle's size and table
sizes (`KaggleFileConfig`). The teacher's formula and the choice of its scales: docs/design.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..paths import atomic_write
from .criteo import MISSING_DENSE, ParsedBlock, write_kaggle_tsv
from .kaggle import (
    KAGGLE_POSITIVE_RATE,
    KAGGLE_TABLE_SIZES,
    KAGGLE_TRAIN_ROWS,
    NUM_DENSE,
    NUM_SPARSE,
)

GENERATOR_VERSION = 4
BLOCK_ROWS = 1 << 17  # generation is deterministic per block of this many rows

# Kaggle-like missing rates: I1..I13, C1..C26.
_DENSE_MISSING = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0005, 0.04, 0.45, 0.04, 0.77, 0.22)
# fmt: off
_SPARSE_MISSING = (0, 0, 0.034, 0.034, 0, 0.12, 0, 0, 0, 0.034, 0, 0.034, 0, 0, 0, 0.034, 0, 0,
                   0.44, 0.44, 0.034, 0.76, 0, 0.034, 0.44, 0.44)
# fmt: on
# log-normal location/scale of each dense count (roughly Kaggle's medians and spreads)
_DENSE_MU = (0.7, 1.3, 2.3, 1.8, 7.2, 4.0, 1.7, 2.3, 3.6, 0.4, 1.0, 0.3, 1.8)
_DENSE_SIGMA = (1.0, 1.6, 1.5, 1.0, 1.9, 1.7, 1.4, 1.0, 1.2, 0.6, 0.9, 1.0, 1.0)
_NEGATIVE_RATE_I2 = 0.03  # Kaggle's I2 has a few small negative values


@dataclass(frozen=True)
class TeacherScales:
    """The teacher's shape: how much of the click signal sits in each kind of term."""

    interaction_pairs: int  # pairs of categorical features with a rank-r dot-product term
    interaction_scale: float  # scale of one pair's term (frequent values)
    dense_cat_pairs: int  # category-specific slopes of a dense feature
    dense_cat_scale: float
    interaction_rank: int = 4
    zipf_exponent: float = 1.1
    dense_scale: float = 0.5  # std of the linear dense term
    category_scale: float = 0.2  # typical per-feature std of category effects (frequent values)
    rare_reference: float = 5e-4  # p_ref in s(p) = sqrt(p / (p + p_ref))


# The presets, selected by name (`--data.teacher`). They share the dense term and the main
# effects; the pairwise terms take about a quarter ("default") or a half ("interactions") of the
# logit's variance. The reasoning: docs/design.md.
TEACHERS: dict[str, TeacherScales] = {
    "default": TeacherScales(
        interaction_pairs=12, interaction_scale=0.3, dense_cat_pairs=4, dense_cat_scale=0.2
    ),
    "interactions": TeacherScales(
        interaction_pairs=16, interaction_scale=0.4, dense_cat_pairs=8, dense_cat_scale=0.4
    ),
}
TeacherName = Literal["default", "interactions"]


@dataclass(frozen=True)
class SyntheticConfig:
    rows: int = 2_000_000
    max_table_size: int = 20_000
    seed: int = 0
    teacher: TeacherName = "default"  # a name in TEACHERS
    positive_rate: float = KAGGLE_POSITIVE_RATE

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(
                f"data.teacher: expected one of {', '.join(map(repr, TEACHERS))}, "
                f"got {self.teacher!r}"
            )

    @property
    def scales(self) -> TeacherScales:
        return TEACHERS[self.teacher]

    def table_sizes(self) -> list[int]:
        return [min(t, self.max_table_size) for t in KAGGLE_TABLE_SIZES]

    def fresh_rows(self, j: int, start: int, stop: int) -> tuple[int, int]:
        """(first, count) of the "fresh" values rows [start, stop) of feature j carry: none here
        (:class:`KaggleFileConfig` has them)."""
        return 0, 0


@dataclass(frozen=True)
class KaggleFileConfig(SyntheticConfig):
    """The synthetic rows at Kaggle's shape: `train.txt`'s line count by default and the 26 Kaggle
    cardinalities uncapped, every value present at that count. Besides the Zipf draws, a share
    T_j / 45,840,617 of feature j's rows (T_j: its values, the missing one aside) each carry the
    next "fresh" value, the rarest first; at 45,840,617 rows they run through all T_j once, so the
    preprocessed table sizes are `KAGGLE_TABLE_SIZES` exactly (the missing value counts as one).
    Fewer rows have the same shares; a multiple of `BLOCK_ROWS` rows is a prefix of the full
    file."""

    rows: int = KAGGLE_TRAIN_ROWS
    FULL_ROWS: ClassVar[int] = KAGGLE_TRAIN_ROWS  # the count at which every value is present
    SIZES: ClassVar[tuple[int, ...]] = KAGGLE_TABLE_SIZES  # the preprocessed table sizes then

    def table_sizes(self) -> list[int]:
        return [t - (_SPARSE_MISSING[j] > 0) for j, t in enumerate(self.SIZES)]

    def fresh_rows(self, j: int, start: int, stop: int) -> tuple[int, int]:
        size = self.table_sizes()[j]
        first = start * size // self.FULL_ROWS
        return first, stop * size // self.FULL_ROWS - first


@dataclass
class Teacher:
    """The planted model, every parameter drawn from ``config.seed``. The logit of a row is

        bias + w . z + sum_k v_k tanh(z_a) z_b          z = standardised log1p(clipped dense)
             + sum_j effect_j[c_j] + sum_(a,b) <u_a[c_a], u_b[c_b]> (+ dense slopes per category)

    where a value's effects shrink with its frequency p as sqrt(p / (p + p_ref)), and ``bias``
    makes the mean probability ``positive_rate``. Category code T_j means missing."""

    config: SyntheticConfig
    probs: list[np.ndarray] = field(default_factory=list)  # per feature: Zipf probabilities (T_j,)
    cdfs: list[np.ndarray] = field(default_factory=list)
    # per feature: raw uint32 value (T_j,), nonzero
    hashes: list[np.ndarray] = field(default_factory=list)
    # per feature: (T_j + 1,), last = missing
    effects: list[np.ndarray] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # feature -> (T_j + 1, r)
    # (dense i, feature j, (T_j + 1,))
    slopes: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    dense_w: np.ndarray | None = None
    dense_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    dense_center: np.ndarray | None = None
    dense_spread: np.ndarray | None = None
    bias: float = 0.0

    @classmethod
    def from_config(cls, config: SyntheticConfig) -> Teacher:
        sc = config.scales
        rng = np.random.default_rng([config.seed, 7919])
        t = cls(config=config)
        for size in config.table_sizes():
            ranks = np.arange(1, size + 1, dtype=np.float64)
            p = ranks**-sc.zipf_exponent
            p /= p.sum()
            t.probs.append(p)
            cdf = np.cumsum(p)
            cdf[-1] = 1.0
            t.cdfs.append(cdf)
            h = rng.choice(np.iinfo(np.uint32).max, size=size, replace=False).astype(
                np.uint32
            ) + np.uint32(1)
            t.hashes.append(h)
            strength = _strength(p, sc.rare_reference)
            sigma = sc.category_scale * rng.uniform(0.3, 1.7) * (1.0 if size > 2 else 0.5)
            eff = np.empty(size + 1)
            eff[:size] = sigma * strength * rng.standard_normal(size)
            eff[size] = sigma * rng.standard_normal()  # the missing value: a frequent "category"
            t.effects.append(eff)
        # interactions between mid-sized features (100..6000 values: think ad category x site
        # category), whose values are seen often enough for a dot product of embeddings to learn;
        # where too few tables are that size (Terabyte's shape), the nearest sizes join them
        big = _pair_features(config.table_sizes(), sc.interaction_pairs)
        r = sc.interaction_rank
        while len(t.pairs) < sc.interaction_pairs:
            a, b = sorted(rng.choice(big, size=2, replace=False).tolist())
            if (a, b) not in t.pairs:
                t.pairs.append((a, b))
        scale = np.sqrt(sc.interaction_scale / np.sqrt(r))
        for j in sorted({k for ab in t.pairs for k in ab}):
            size = len(t.probs[j])
            s = np.r_[_strength(t.probs[j], sc.rare_reference), 1.0]
            t.vectors[j] = t._centred(j, scale * s[:, None] * rng.standard_normal((size + 1, r)))
        # dense x categorical: a category-specific slope of one dense feature
        for _ in range(sc.dense_cat_pairs):
            i = int(rng.integers(NUM_DENSE))
            j = int(rng.choice(big))
            st = np.r_[_strength(t.probs[j], sc.rare_reference), 1.0]
            w = t._centred(j, sc.dense_cat_scale * st * rng.standard_normal(len(st)))
            t.slopes.append((i, j, w))
        # dense: standardise log1p of the typical counts, a linear part and a few nonlinear pairs
        pilot = np.log1p(
            np.clip(_dense_raw(np.random.default_rng([config.seed, 104729]), 50_000), 0, None)
        )
        t.dense_center, t.dense_spread = pilot.mean(axis=0), pilot.std(axis=0) + 1e-6
        w = rng.standard_normal(NUM_DENSE)
        t.dense_w = sc.dense_scale * w / np.linalg.norm(w) * np.sqrt(2.0)
        for _ in range(4):
            a, b = rng.choice(NUM_DENSE, size=2, replace=False).tolist()
            t.dense_pairs.append((a, b, float(rng.normal(0, 0.3))))
        return t

    def _centred(self, j: int, values: np.ndarray) -> np.ndarray:
        """`values` (T_j + 1, ...) of feature j minus their mean over j's value distribution
        (missing included), so that a term they enter averages to 0 over j: a pure interaction,
        none of which a model of main effects can take up."""
        q = np.r_[(1 - _SPARSE_MISSING[j]) * self.probs[j], _SPARSE_MISSING[j]]
        return values - np.tensordot(q, values, axes=1)

    # -- rows ------------------------------------------------------------------------------------

    def _block(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw rows of block `index`: dense int32 (n,13) with MISSING_DENSE, cat codes int64 (n,26)
        (T_j = missing) and uniforms (n,) for the labels."""
        c = self.config
        rng = np.random.default_rng([c.seed, GENERATOR_VERSION, index])
        dense = _dense_raw(rng, n)
        codes = np.empty((n, NUM_SPARSE), dtype=np.int64)
        for j in range(NUM_SPARSE):
            cj = np.searchsorted(self.cdfs[j], rng.random(n), side="right")
            cj = np.minimum(cj, len(self.cdfs[j]) - 1)
            cj[rng.random(n) < _SPARSE_MISSING[j]] = len(self.cdfs[j])
            codes[:, j] = cj
        u = rng.random(n)
        start = index * BLOCK_ROWS
        fresh = np.random.default_rng([c.seed, GENERATOR_VERSION, index, 1])  # rows: its own draws
        for j in range(NUM_SPARSE):
            first, count = c.fresh_rows(j, start, start + n)
            if count:  # value codes counted down from the rarest, at random rows of the block
                size = len(self.cdfs[j])
                rows = fresh.choice(n, size=count, replace=False)
                codes[rows, j] = size - 1 - (first + np.arange(count)) % size
        return dense.astype(np.int32), codes, u

    def _z(self, dense: np.ndarray) -> np.ndarray:
        x = np.log1p(np.clip(dense, 0, None).astype(np.float64))  # what the model sees
        return (x - self.dense_center) / self.dense_spread

    def dense_term(self, dense: np.ndarray) -> np.ndarray:
        """The dense part of the logit (n,). Categories are independent of the dense features, so
        ranking by this term is the best a dense-only model can do (exact without dense slopes)."""
        z = self._z(dense)
        out = z @ self.dense_w
        for a, b, v in self.dense_pairs:
            out += v * np.tanh(z[:, a]) * z[:, b]
        return out

    def terms(self, dense: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
        """The logit's parts (n,) each, without the bias: "dense" (`dense_term`), "main" (one
        effect per category value) and "pairwise" (the categorical pairs' dot products and the
        dense slopes per category; each averages to 0 over either of its features).
        dense: raw ints (n, 13); codes: (n, 26), T_j = missing."""
        main = np.zeros(len(codes))
        for j in range(NUM_SPARSE):
            main += self.effects[j][codes[:, j]]
        pairwise = np.zeros(len(codes))
        for a, b in self.pairs:
            pairwise += np.einsum(
                "nr,nr->n", self.vectors[a][codes[:, a]], self.vectors[b][codes[:, b]]
            )
        if self.slopes:
            z = self._z(dense)
            for i, j, w in self.slopes:
                pairwise += z[:, i] * w[codes[:, j]]
        return {"dense": self.dense_term(dense), "main": main, "pairwise": pairwise}

    def logit(self, dense: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Teacher logit without the bias (n,): the sum of `terms`."""
        return sum(self.terms(dense, codes).values())

    def solve_bias(self) -> float:
        """Bias that makes the mean click probability `positive_rate` on the first block."""
        n = min(self.config.rows, BLOCK_ROWS) or 1
        dense, codes, _ = self._block(0, max(n, 50_000))
        logit = self.logit(dense, codes)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if _sigmoid(logit + mid).mean() < self.config.positive_rate:
                lo = mid
            else:
                hi = mid
        self.bias = (lo + hi) / 2
        return self.bias

    def blocks(self) -> Iterator[ParsedBlock]:
        """Raw rows in blocks (as the text parser returns them) with `.extras["prob"]`."""
        c = self.config
        self.solve_bias()
        lookup = [np.r_[h, np.uint32(0)] for h in self.hashes]  # missing -> raw 0, as parsed
        for index, start in enumerate(range(0, c.rows, BLOCK_ROWS)):
            n = min(BLOCK_ROWS, c.rows - start)
            dense, codes, u = self._block(index, n)
            prob = _sigmoid(self.logit(dense, codes) + self.bias)
            cat = np.zeros((n, NUM_SPARSE), dtype=np.uint32)
            for j in range(NUM_SPARSE):
                cat[:, j] = lookup[j][codes[:, j]]
            label = (u < prob).astype(np.uint8)
            yield ParsedBlock(
                label=label,
                dense=dense,
                cat=cat,
                first_line=start + 1,
                extras={"prob": prob.astype(np.float32)},
            )

    def auc_decomposition(self, start: int, stop: int) -> dict[str, float]:
        """AUC on rows [start, stop) (labels as `blocks` draws them) of the teacher's logit cut
        down: "dense_only" (the dense term), "main_effects" (dense + the categories' own effects,
        no pairwise term) and "bayes" (the whole logit: the Bayes-optimal ranking). Solves the
        bias first; regenerates only the blocks that hold the rows."""
        self.solve_bias()
        parts: dict[str, list[np.ndarray]] = {"dense": [], "main": [], "pairwise": [], "label": []}
        for index in range(start // BLOCK_ROWS, -(-stop // BLOCK_ROWS)):
            first = index * BLOCK_ROWS
            dense, codes, u = self._block(index, min(BLOCK_ROWS, self.config.rows - first))
            lo, hi = max(start - first, 0), min(stop - first, len(u))
            terms = self.terms(dense[lo:hi], codes[lo:hi])
            for k, v in terms.items():
                parts[k].append(v)
            parts["label"].append(u[lo:hi] < _sigmoid(sum(terms.values()) + self.bias))
        d, m, p, y = (np.concatenate(parts[k]) for k in ("dense", "main", "pairwise", "label"))
        return {
            "dense_only": roc_auc(d, y),
            "main_effects": roc_auc(d + m, y),
            "bayes": roc_auc(d + m + p, y),
        }


def _dense_raw(rng: np.random.Generator, n: int) -> np.ndarray:
    """Raw dense counts int64 (n, 13): log-normal, a few negatives in I2, MISSING_DENSE: missing."""
    dense = np.empty((n, NUM_DENSE), dtype=np.int64)
    for i in range(NUM_DENSE):
        v = np.floor(np.exp(_DENSE_MU[i] + _DENSE_SIGMA[i] * rng.standard_normal(n))) - 1
        v = np.minimum(v, 50_000_000).astype(np.int64)
        if i == 1:
            neg = rng.random(n) < _NEGATIVE_RATE_I2
            v[neg] = -rng.integers(1, 4, size=int(neg.sum()))
        v[rng.random(n) < _DENSE_MISSING[i]] = MISSING_DENSE
        dense[:, i] = v
    return dense


def _pair_features(sizes: list[int], pairs: int) -> list[int]:
    """Features (indices, ascending) to draw ``pairs`` distinct pairs from: those with 100..6000
    values, or, when they give fewer pairs, the tables nearest that range in log size."""
    window = [j for j, n in enumerate(sizes) if 100 <= n <= 6000]
    need = next(k for k in range(2, len(sizes) + 2) if k * (k - 1) // 2 >= pairs)
    if need > len(sizes):
        raise ValueError(f"teacher: {pairs} interaction pairs need more than {len(sizes)} tables")
    if len(window) >= need:
        return window

    def distance(j: int) -> float:
        n = max(sizes[j], 1)
        return max(np.log(100 / n), np.log(n / 6000), 0.0)

    return sorted(sorted(range(len(sizes)), key=lambda j: (distance(j), j))[:need])


def _strength(p: np.ndarray, p_ref: float) -> np.ndarray:
    return np.sqrt(p / (p + p_ref))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def write_tsv(config: SyntheticConfig, path: str | Path) -> Path:
    """Write the synthetic rows as Kaggle `train.txt` (gzip when the name ends in .gz); the name
    holds the whole file or nothing (written beside it, then renamed)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        compress = path.suffix == ".gz"
        for block in Teacher.from_config(config).blocks():
            write_kaggle_tsv(
                tmp, block.label, block.dense, block.cat, append=True, compress=compress
            )

    atomic_write(path, write)
    return path


def config_dict(config: SyntheticConfig) -> dict:
    """Everything the rows depend on: the generator's version, the config (the preset's name
    included) and the preset's scales."""
    return {
        "generator_version": GENERATOR_VERSION,
        **asdict(config),
        "scales": asdict(config.scales),
    }


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(label, score))


def binary_metrics(prob: np.ndarray, label: np.ndarray) -> dict:
    """AUC, log loss and positive rate of predictions `prob` for labels `label`."""
    from sklearn.metrics import roc_auc_score

    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    y = label.astype(np.float64)
    ll = float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()) if len(y) else float("nan")
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "auc": auc,
        "log_loss": ll,
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
    }


def cached_synthetic(config: SyntheticConfig, cache_dir, options) -> tuple[Path, dict]:
    """The cache directory of the synthetic data set, generated on first use.

    Built through the same `build_arrays` core as Kaggle text, plus `prob.npy` (the teacher's
    probabilities) and meta["teacher"]: the preset's name, the teacher's AUC / log loss on every
    split ("metrics") and on val and test its `Teacher.auc_decomposition` ("auc_decomposition").
    """
    from .preprocess import build_arrays, cache_key, ensure_cache

    opts = {"max_ind_range": options.max_ind_range, "min_frequency": options.min_frequency}
    cfg = config_dict(config)
    key = cache_key("synthetic", cfg, opts)

    def build(tmp: Path) -> dict:
        teacher = Teacher.from_config(config)
        meta = build_arrays(teacher.blocks(), tmp, options, extras={"prob": (np.float32, ())})
        prob = np.load(tmp / "prob.npy", mmap_mode="r")
        label = np.load(tmp / "label.npy", mmap_mode="r")
        meta["teacher"] = {
            "name": config.teacher,
            "bias": teacher.bias,
            "pairs": teacher.pairs,
            "metrics": {
                s: binary_metrics(prob[a:b], label[a:b]) for s, (a, b) in meta["splits"].items()
            },
            "auc_decomposition": {
                s: teacher.auc_decomposition(a, b)
                for s, (a, b) in meta["splits"].items()
                if s != "train" and b > a and 0 < label[a:b].sum() < b - a
            },
        }
        return meta

    name = f"synthetic-{config.teacher}-{config.rows}-{config.max_table_size}-s{config.seed}-{key}"
    return ensure_cache(
        cache_dir, name, key, build, {"source": "synthetic", "input": cfg, "options": opts}
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m lit_dlrm.data.synthetic write OUT`: a Kaggle-shaped `train.txt`
    (:class:`KaggleFileConfig`); prints {"lines", "bytes", "sha1"} as JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m lit_dlrm.data.synthetic",
        description="Write a synthetic Criteo Kaggle train.txt: Kaggle's line count and its 26 "
        "cardinalities, every value present at full size, the planted teacher's labels.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the file OUT (OUT.gz: gzipped)")
    w.add_argument("out")
    w.add_argument("--lines", type=int, default=KAGGLE_TRAIN_ROWS)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--teacher", choices=sorted(TEACHERS), default="default")
    a = ap.parse_args(argv)
    if a.lines < 1:
        ap.error(f"--lines: expected >= 1, got {a.lines}")
    path = write_tsv(KaggleFileConfig(rows=a.lines, seed=a.seed, teacher=a.teacher), a.out)
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    size = path.stat().st_size
    print(json.dumps({"lines": a.lines, "bytes": size, "sha1": digest.hexdigest()}))


if __name__ == "__main__":
    main()
