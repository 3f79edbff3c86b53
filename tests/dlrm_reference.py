"""facebookresearch/dlrm's own code paths, cut down to what the tests compare with (the oracle).

Each function repeats dlrm's calls, dtypes and layouts (MIT-licensed code; the functions they
come from are named): its Kaggle preprocessing, which writes `kaggleAdDisplayChallenge_processed
.npz` (`data_utils.py`: `getCriteoAdData`, `processCriteoAdData`, `concatCriteoAdData`), its
test-split batches (`dlrm_data_pytorch.py`: `CriteoDataset`, `collate_wrapper_criteo_offset`),
its network (`dlrm_s_pytorch.py`: `DLRM_Net` with `create_mlp`, `create_emb`,
`interact_features`, `sequential_forward`) and its `--save-model` file (`dlrm_s_pytorch.py`: the
training loop's loss bookkeeping, `inference` and `torch.save(model_metrics_dict, ...)`).
Nothing here is re-saved or tidied: a fixture differs from dlrm's files only in size.
"""

from __future__ import annotations

import io
import pickle
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

DAYS = 7  # Kaggle


def preprocess_kaggle(datafile: Path) -> Path:
    """dlrm's Kaggle preprocessing of the text file `datafile` (`getCriteoAdData` with
    days=7, max_ind_range=-1, no sub-sampling, no memory map); returns the processed .npz."""
    d_path = datafile.parent
    npzfile = d_path / (datafile.name.split(".")[0] + "_day")
    # count lines and cut the file into days with divmod
    with open(datafile) as f:
        total_count = sum(1 for _ in f)
    num_data_per_split, extras = divmod(total_count, DAYS)
    total_per_file = [num_data_per_split] * DAYS
    for j in range(extras):
        total_per_file[j] += 1
    with open(datafile) as f:
        lines = f.readlines()
    convertDicts = [{} for _ in range(26)]
    start = 0
    for split in range(DAYS):  # process_one_file
        day = lines[start : start + total_per_file[split]]
        start += total_per_file[split]
        num_data_in_split = len(day)
        y = np.zeros(num_data_in_split, dtype="i4")
        X_int = np.zeros((num_data_in_split, 13), dtype="i4")
        X_cat = np.zeros((num_data_in_split, 26), dtype="i4")
        i = 0
        for line in day:
            line = line.split("\t")
            for j in range(len(line)):
                if (line[j] == "") or (line[j] == "\n"):
                    line[j] = "0"
            target = np.int32(line[0])
            y[i] = target
            X_int[i] = np.array(line[1:14], dtype=np.int32)
            X_cat[i] = np.array(list(map(lambda x: int(x, 16), line[14:])), dtype=np.int32)
            for j in range(26):
                convertDicts[j][X_cat[i][j]] = 1
            i += 1
        np.savez_compressed(
            f"{npzfile}_{split}.npz",
            X_int=X_int[0:i, :],
            X_cat_t=np.transpose(X_cat[0:i, :]),  # transpose of the data
            y=y[0:i],
        )
    counts = np.zeros(26, dtype=np.int32)
    for j in range(26):
        for i, x in enumerate(convertDicts[j]):
            convertDicts[j][x] = i
        counts[j] = len(convertDicts[j])
    for i in range(DAYS):  # processCriteoAdData
        with np.load(f"{npzfile}_{i}.npz") as data:
            X_cat_t = np.zeros(data["X_cat_t"].shape)
            for j in range(26):
                for k, x in enumerate(data["X_cat_t"][j, :]):
                    X_cat_t[j, k] = convertDicts[j][x]
            X_int = data["X_int"]
            X_int[X_int < 0] = 0
            y = data["y"]
        np.savez_compressed(
            f"{npzfile}_{i}_processed.npz",
            X_cat=np.transpose(X_cat_t),  # transpose of the data
            X_int=X_int,
            y=y,
        )
    for i in range(DAYS):  # concatCriteoAdData (memory_map=False)
        with np.load(f"{npzfile}_{i}_processed.npz") as data:
            if i == 0:
                X_cat = data["X_cat"]
                X_int = data["X_int"]
                y = data["y"]
            else:
                X_cat = np.concatenate((X_cat, data["X_cat"]))
                X_int = np.concatenate((X_int, data["X_int"]))
                y = np.concatenate((y, data["y"]))
    out = d_path / "kaggleAdDisplayChallenge_processed.npz"
    np.savez_compressed(out, X_cat=X_cat, X_int=X_int, y=y, counts=counts)
    return out


def collate_wrapper_criteo_offset(list_of_tuples):
    """dlrm's batch: (X_int, lS_o, lS_i, T) from (X_int, X_cat, y) rows."""
    transposed_data = list(zip(*list_of_tuples))
    X_int = torch.log(torch.tensor(transposed_data[0], dtype=torch.float) + 1)
    X_cat = torch.tensor(transposed_data[1], dtype=torch.long)
    T = torch.tensor(transposed_data[2], dtype=torch.float32).view(-1, 1)
    batchSize = X_cat.shape[0]
    featureCnt = X_cat.shape[1]
    lS_i = [X_cat[:, i] for i in range(featureCnt)]
    lS_o = [torch.tensor(range(batchSize)) for _ in range(featureCnt)]
    return X_int, torch.stack(lS_o), torch.stack(lS_i), T


def split_batches(npz: Path, split: str, batch_size: int) -> list:
    """dlrm's batches of `split` ("train" unshuffled, "val" or "test") of a processed .npz
    (`CriteoDataset` without memory map, `randomize="none"`, then a sequential DataLoader)."""
    with np.load(npz) as data:
        X_int, X_cat, y = data["X_int"], data["X_cat"], data["y"]
    num_data_per_split, extras = divmod(len(y), DAYS)
    total_per_file = [num_data_per_split] * DAYS
    for j in range(extras):
        total_per_file[j] += 1
    offset_per_file = np.array([0] + list(total_per_file))
    for i in range(DAYS):
        offset_per_file[i + 1] += offset_per_file[i]
    indices = np.array_split(np.arange(len(y)), offset_per_file[1:-1])
    train_indices = np.concatenate(indices[:-1])
    test_indices, val_indices = np.array_split(indices[-1], 2)
    rows = {"train": train_indices, "val": val_indices, "test": test_indices}[split]
    dataset = [(X_int[i], X_cat[i], y[i]) for i in rows]
    return [
        collate_wrapper_criteo_offset(dataset[s : s + batch_size])
        for s in range(0, len(dataset), batch_size)
    ]


class DLRM_Net(nn.Module):
    """dlrm's network on one device, "dot" interaction without self-interaction, BCE loss."""

    def create_mlp(self, ln, sigmoid_layer):
        layers = nn.ModuleList()
        for i in range(0, ln.size - 1):
            n = ln[i]
            m = ln[i + 1]
            LL = nn.Linear(int(n), int(m), bias=True)
            mean = 0.0
            std_dev = np.sqrt(2 / (m + n))
            W = np.random.normal(mean, std_dev, size=(m, n)).astype(np.float32)
            std_dev = np.sqrt(1 / m)
            bt = np.random.normal(mean, std_dev, size=m).astype(np.float32)
            LL.weight.data = torch.tensor(W, requires_grad=True)
            LL.bias.data = torch.tensor(bt, requires_grad=True)
            layers.append(LL)
            if i == sigmoid_layer:
                layers.append(nn.Sigmoid())
            else:
                layers.append(nn.ReLU())
        return torch.nn.Sequential(*layers)

    def create_emb(self, m, ln):
        emb_l = nn.ModuleList()
        for i in range(0, ln.size):
            n = ln[i]
            EE = nn.EmbeddingBag(n, m, mode="sum", sparse=True)
            W = np.random.uniform(low=-np.sqrt(1 / n), high=np.sqrt(1 / n), size=(n, m)).astype(
                np.float32
            )
            EE.weight.data = torch.tensor(W, requires_grad=True)
            emb_l.append(EE)
        return emb_l

    def __init__(self, m_spa, ln_emb, ln_bot, ln_top):
        super().__init__()
        self.emb_l = self.create_emb(m_spa, ln_emb)
        self.bot_l = self.create_mlp(ln_bot, -1)
        self.top_l = self.create_mlp(ln_top, ln_top.size - 2)
        self.loss_fn = torch.nn.BCELoss(reduction="mean")

    def apply_emb(self, lS_o, lS_i):
        return [self.emb_l[k](lS_i[k], lS_o[k], per_sample_weights=None) for k in range(len(lS_i))]

    def interact_features(self, x, ly):
        (batch_size, d) = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        _, ni, nj = Z.shape
        offset = 0
        li = torch.tensor([i for i in range(ni) for j in range(i + offset)])
        lj = torch.tensor([j for i in range(nj) for j in range(i + offset)])
        Zflat = Z[:, li, lj]
        return torch.cat([x] + [Zflat], dim=1)

    def forward(self, dense_x, lS_o, lS_i):
        x = self.bot_l(dense_x)
        ly = self.apply_emb(lS_o, lS_i)
        z = self.interact_features(x, ly)
        return self.top_l(z)


def make_dlrm(counts, m_spa: int = 4, bottom=(8,), top=(6,)) -> DLRM_Net:
    """dlrm's model for these table sizes (its `--arch-mlp-bot` ends in `m_spa`)."""
    ln_emb = np.asarray(counts)
    ln_bot = np.array([13, *bottom, m_spa])
    num_int = (len(counts) + 1) * len(counts) // 2 + m_spa
    ln_top = np.array([num_int, *top, 1])
    return DLRM_Net(m_spa, ln_emb, ln_bot, ln_top)


def train_and_save(
    dlrm: DLRM_Net, train, test, path: Path, *, mlperf: bool = False, numpy1: bool = False
) -> None:
    """dlrm's loop over `train` batches (SGD lr 0.1), one `inference` over `test` and the
    `--save-model` dict it writes. `numpy1`: pickle numpy scalars as numpy 1 (dlrm's usual
    environment) names them, `numpy.core.multiarray.scalar`, instead of numpy 2's
    `numpy._core.multiarray.scalar`; nothing else in the pickle differs between the two."""
    optimizer = torch.optim.SGD(dlrm.parameters(), lr=0.1)
    total_loss, total_samp = 0, 0
    for X, lS_o, lS_i, T in train:
        Z = dlrm(X, lS_o, lS_i)
        E = dlrm.loss_fn(Z, T)
        L = E.detach().cpu().numpy()  # numpy array
        mbs = T.shape[0]
        optimizer.zero_grad()
        E.backward()
        optimizer.step()
        total_loss += L * mbs
        total_samp += mbs
    train_loss = total_loss / total_samp
    total_loss = 0
    # inference
    test_accu, test_samp, scores, targets = 0, 0, [], []
    with torch.no_grad():
        for X_test, lS_o_test, lS_i_test, T_test in test:
            Z_test = dlrm(X_test, lS_o_test, lS_i_test)
            S_test = Z_test.detach().cpu().numpy()
            T_test = T_test.detach().cpu().numpy()
            mbs_test = T_test.shape[0]
            A_test = np.sum((np.round(S_test, 0) == T_test).astype(np.uint8))
            test_accu += A_test
            test_samp += mbs_test
            scores.append(S_test)
            targets.append(T_test)
    model_metrics_dict = {
        "nepochs": 1,
        "nbatches": len(train),
        "nbatches_test": len(test),
        "state_dict": dlrm.state_dict(),
        "test_acc": test_accu / test_samp,
    }
    if mlperf:
        from sklearn.metrics import roc_auc_score

        model_metrics_dict["test_auc"] = roc_auc_score(
            np.concatenate(targets).ravel(), np.concatenate(scores).ravel()
        )
    model_metrics_dict["epoch"] = 0
    model_metrics_dict["iter"] = len(train)
    model_metrics_dict["train_loss"] = train_loss
    model_metrics_dict["total_loss"] = total_loss
    model_metrics_dict["opt_state_dict"] = optimizer.state_dict()
    if numpy1:
        torch.save(model_metrics_dict, path, pickle_module=_Numpy1Pickle)
    else:
        torch.save(model_metrics_dict, path)


class _Numpy1Pickler(pickle.Pickler):
    """pickle.Pickler whose output names numpy's scalar reconstructor as numpy 1 does."""

    def __init__(self, file, protocol=None):
        self._file, self._buf = file, io.BytesIO()
        super().__init__(self._buf, protocol)

    def dump(self, obj):
        super().dump(obj)
        data = self._buf.getvalue()
        numpy1 = b"cnumpy.core.multiarray\nscalar\n"  # protocol 2 GLOBAL opcodes, as torch.save
        data = data.replace(b"cnumpy._core.multiarray\nscalar\n", numpy1)
        assert numpy1 in data
        self._file.write(data)


_Numpy1Pickle = types.ModuleType("numpy1_pickle")
_Numpy1Pickle.Pickler = _Numpy1Pickler
