"""``python scripts/predict.py``: the same as ``lit-dlrm-predict`` (``lit_dlrm.cli.predict``)."""

from lit_dlrm.cli import predict

if __name__ == "__main__":
    predict()
