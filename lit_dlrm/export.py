"""Weights-only export of a DLRM (dense, pruned, compact, quantised): safetensors + a JSON config.

An export is a directory of two files, read back with no pickle:

    config.json        {"format": "lit_dlrm-weights", "version": 1, "architecture": {DLRM's
                        arguments}, "activation_sparsity": float, "tables": [{"kind": ...}, ...]}
    model.safetensors  the MLPs under facebookresearch/dlrm's keys (``bot_l.0.weight``, ...), and
                       table K by its kind:
                         dense    emb_l.K.weight                 float (n, d)
                         compact  emb_l.K.{row_base,row_off,cols,values}  (CompactEmbeddingBag)
                         int8     emb_l.K.weight.{q,scale}       int8 (n, d), scale (n,)
                         int4     emb_l.K.weight.{q,scale}       uint8 (n, d / 2), scale (n,)

(the int8/int4 keys are :func:`lit_dlrm.sparsity.quantize.quantized_state_dict`'s, as in the
sweep's ``.lds`` files). :func:`save_weights` writes it (each file atomically, the config last, so a
directory with a config is whole); :func:`load_weights` rebuilds the model, each table in its
kind (``nn.EmbeddingBag``, :class:`CompactEmbeddingBag`, :class:`QuantizedEmbeddingBag`), with
the same outputs as the model saved; :func:`stored_model` keeps the integers of a quantised
``.lds`` file as they are. :func:`export_program` is ``torch.export`` of a dense or
compact model with a dynamic batch size. Errors: :class:`ExportError` naming the file and entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lit_dlrm.model import DLRM, with_tables
from lit_dlrm.paths import atomic_write, write_json
from lit_dlrm.sparsity.compact import CompactEmbeddingBag
from lit_dlrm.sparsity.compression import is_compressed_file, load_compressed
from lit_dlrm.sparsity.quantize import QuantizedEmbeddingBag, QuantizedTable

FORMAT, VERSION = "lit_dlrm-weights", 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
_Q_DTYPE = {8: torch.int8, 4: torch.uint8}


class ExportError(ValueError):
    """An export directory that cannot be read, or a model that cannot be exported."""


def _widths(mlp: nn.Sequential) -> list[int]:
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    return [linears[0].in_features, *(m.out_features for m in linears)]


def architecture_of(model: DLRM) -> dict:
    """The :class:`DLRM` arguments that rebuild ``model`` (whatever form its tables are in)."""
    bottom, top = _widths(model.bot_l), _widths(model.top_l)
    return dict(
        table_sizes=[int(t.num_embeddings) for t in model.emb_l],
        num_dense=bottom[0],
        embedding_dim=bottom[-1],
        bottom_mlp=bottom[1:-1],
        top_mlp=top[1:-1],
        interaction=model.interaction,
    )


def _table_entries(k: int, table: nn.Module) -> tuple[dict, dict[str, Tensor]]:
    """Table ``k`` -> (its config entry, its tensors under their export keys)."""
    key = f"emb_l.{k}"
    if isinstance(table, CompactEmbeddingBag):
        tensors = {f"{key}.{name}": t for name, t in table.state_dict().items()}
        return {"kind": "compact", "block_width": table.block_width}, tensors
    if isinstance(table, QuantizedEmbeddingBag):
        qt = table.table()
        return {"kind": f"int{qt.bits}"}, {f"{key}.weight.q": qt.q, f"{key}.weight.scale": qt.scale}
    if isinstance(table, nn.EmbeddingBag):
        return {"kind": "dense"}, {f"{key}.weight": table.weight}
    raise ExportError(f"emb_l.{k}: cannot export a {type(table).__name__} table")


def save_weights(model: DLRM, directory: str | Path) -> Path:
    """Write ``model`` (a :class:`DLRM` with tables of any kind above) into ``directory``
    (created if needed; existing files of the export replaced) -> the directory."""
    directory = Path(directory)
    tensors = {
        name: t for name, t in model.state_dict().items() if name.startswith(("bot_l.", "top_l."))
    }
    tables = []
    for k, table in enumerate(model.emb_l):
        entry, table_tensors = _table_entries(k, table)
        tables.append(entry)
        tensors.update(table_tensors)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture_of(model),
        "activation_sparsity": float(model.activation_sparsity),
        "tables": tables,
    }
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    write_json(directory / CONFIG, config)
    return directory


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG
    if not path.is_file():
        raise ExportError(f"{path}: no such file; expected an export directory of save_weights")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: not a JSON config ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"{path}: expected format {FORMAT!r}, got {config.get('format')!r}")
    if config.get("version") != VERSION:
        raise ExportError(f"{path}: format version {config.get('version')}, expected {VERSION}")
    return config


def _table(k: int, entry: dict, n: int, d: int, tensors: dict[str, Tensor]) -> nn.Module:
    key, kind = f"emb_l.{k}", entry.get("kind")
    if kind == "dense":
        weight = tensors.pop(f"{key}.weight")
        if tuple(weight.shape) != (n, d):
            raise ValueError(f"{key}.weight: expected ({n}, {d}), got {tuple(weight.shape)}")
        return nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode="sum", sparse=True)
    if kind == "compact":
        names = ("row_base", "row_off", "cols", "values")
        buffers = {name: tensors.pop(f"{key}.{name}") for name in names}
        return CompactEmbeddingBag.from_buffers(n, d, entry["block_width"], buffers)
    if kind in ("int8", "int4"):
        bits = int(kind[3:])
        q, scale = tensors.pop(f"{key}.weight.q"), tensors.pop(f"{key}.weight.scale")
        table = QuantizedTable(q, scale, bits)
        if q.dtype != _Q_DTYPE[bits] or table.shape != (n, d) or scale.shape != (n,):
            raise ValueError(
                f"{key}.weight.q: expected {_Q_DTYPE[bits]} for a ({n}, {d}) table with ({n},) "
                f"scales, got {q.dtype} {tuple(q.shape)}, scales {tuple(scale.shape)}"
            )
        return QuantizedEmbeddingBag(table)
    raise ValueError(f"tables[{k}].kind: expected dense, compact, int8 or int4, got {kind!r}")


def load_weights(directory: str | Path) -> DLRM:
    """The model :func:`save_weights` wrote into ``directory``, in eval mode, on the CPU."""
    directory = Path(directory)
    config = _read_config(directory)
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except Exception as err:  # missing, truncated or foreign: safetensors raises several types
        raise ExportError(
            f"{directory / WEIGHTS}: not a readable safetensors file ({err})"
        ) from err
    try:
        arch, entries = config["architecture"], config["tables"]
        with torch.device("meta"):  # no memory, no initialisation: every tensor comes from disk
            model = DLRM(**arch)
        if len(entries) != len(arch["table_sizes"]):
            raise ValueError(
                f"tables: {len(entries)} entries for {len(arch['table_sizes'])} tables"
            )
        model.emb_l = nn.ModuleList(
            _table(k, entry, n, arch["embedding_dim"], tensors)
            for k, (entry, n) in enumerate(zip(entries, arch["table_sizes"]))
        )
        mlps = {
            name: tensors.pop(name) for name in list(tensors) if name.startswith(("bot_", "top_"))
        }
        model.load_state_dict({**model.emb_l.state_dict(prefix="emb_l."), **mlps}, assign=True)
        if tensors:
            raise ValueError(f"unexpected entries {sorted(tensors)[:3]}")
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ExportError(f"{directory}: not an export this code can rebuild: {err}") from err
    model.activation_sparsity = float(config.get("activation_sparsity", 0.0))
    return model.eval()


def stored_model(model: DLRM, path: str | Path) -> DLRM:
    """``model`` as read from ``path`` by the checkpoint loader (dequantised), with the integer
    tables of a quantised ``.lds`` file put back as :class:`QuantizedEmbeddingBag` s (a shallow
    copy; MLPs and other tables shared): its integers as stored, not quantised again."""
    if not is_compressed_file(path):
        return model
    state = load_compressed(path)
    tables = list(model.emb_l)
    for k in range(len(tables)):
        q = state.get(f"emb_l.{k}.weight.q")
        if q is not None:
            bits = {torch.int8: 8, torch.uint8: 4}[q.dtype]
            tables[k] = QuantizedEmbeddingBag(
                QuantizedTable(q, state[f"emb_l.{k}.weight.scale"], bits)
            )
    return with_tables(model, tables)


def export_program(
    model: nn.Module, example: tuple[Tensor, Tensor]
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of a DLRM with dense or compact tables, for ``(dense (B, 13),
    sparse (B, 26))`` inputs of any batch size B >= 1 (``example`` gives one); run it with
    ``program.module()(dense, sparse)`` -> logits (B,). Integer tables are not exportable: torch's
    quantized embedding-bag kernels have no export support."""
    batch = torch.export.Dim("batch", min=1)
    shapes = {"dense": {0: batch}, "sparse": {0: batch}}
    return torch.export.export(model.eval(), tuple(example), dynamic_shapes=shapes)
