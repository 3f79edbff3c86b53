"""``python scripts/train.py``: the same as ``lit-dlrm-train`` (:func:`lit_dlrm.cli.train`)."""

from lit_dlrm.cli import train

if __name__ == "__main__":
    train()
