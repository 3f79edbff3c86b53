"""``python scripts/sweep.py``: the same as ``lit-dlrm-sweep`` (:func:`lit_dlrm.cli.sweep`)."""

from lit_dlrm.cli import sweep

if __name__ == "__main__":
    sweep()
