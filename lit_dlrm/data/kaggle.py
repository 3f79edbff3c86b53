"""Facts about the Criteo Kaggle (Display Advertising Challenge) data set, in one place.

`train.txt` has 45,840,617 TAB-separated lines of 40 fields: the label (0/1), 13 integer
features I1..I13 and 26 categorical features C1..C26 (8 lowercase hex digits, a 32-bit hash).
`test.txt` is the same without the label (39 fields). Benchmarks, the synthetic generator and
the preprocessing all import these constants from here.
"""

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))

# Distinct values per categorical feature over the whole of train.txt (C1..C26), as counted by
# facebookresearch/dlrm's preprocessing: 33,762,577 embedding rows in total.
# fmt: off
KAGGLE_TABLE_SIZES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# fmt: on
KAGGLE_TRAIN_ROWS = 45_840_617
KAGGLE_POSITIVE_RATE = 0.256

# DLRM cuts the file into this many consecutive "days"; the last one is split into test (first
# half) and validation (second half).
NUM_DAYS = 7

assert len(KAGGLE_TABLE_SIZES) == NUM_SPARSE
