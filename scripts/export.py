"""``python scripts/export.py``: the same as ``lit-dlrm-export`` (:func:`lit_dlrm.cli.export`)."""

from lit_dlrm.cli import export

if __name__ == "__main__":
    export()
