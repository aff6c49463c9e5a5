"""A local ONNX export of a sentence-transformers model, the graph OpenVINO runs on a CPU.

Made here from the model folder on disk with torch's ONNX exporter (no download, no optimum):
Transformer -> mean pooling -> L2 norm in one fp32 graph. OpenVINO fuses it and picks its own
compute precision (ingest/openvino_runner.py), so one export serves fp32 and bf16.

Cached under `<cache root>/<model slug>-<weights sha256[:12]>-fp32-v<N>/` (model.onnx,
tokenizer.json, meta.json), written to a temporary folder first and then renamed, so a
crashed or concurrent export never leaves a half-written model behind. Only the plain
Transformer -> mean Pooling (-> Normalize) pipeline is exported; other models stay on PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from flytegpt.ingest.json_files import read_json_dict, write_json_atomic

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the export recipe changes: vectors may change with it
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"


class NotExportable(ValueError):
    """The model is not a plain Transformer + mean pooling pipeline (or has no local folder)."""


def default_cache_root() -> Path:
    """$FLYTEGPT_ONNX_CACHE, else ~/.cache/flytegpt/onnx (follows $XDG_CACHE_HOME)."""
    env = os.environ.get("FLYTEGPT_ONNX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flytegpt" / "onnx"


def pooling_facts(folder: Path) -> tuple[list[str], list[str], int]:
    """(module kinds, pooling modes, output dimension) of a sentence-transformers model folder.

    sentence-transformers 6 writes the pooling config as `pooling_mode: "mean"` and
    `embedding_dimension`; earlier releases as `pooling_mode_mean_tokens: true` and
    `word_embedding_dimension`. A model tuned here (ingest/tuning.py) is saved in the new form.
    Raises OSError, ValueError, KeyError, StopIteration or TypeError on a folder that is not one.
    """
    modules = json.loads((folder / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling = next(m for m in modules if m["type"].endswith("Pooling"))
    cfg = json.loads((folder / pooling["path"] / "config.json").read_text())
    if "pooling_mode" in cfg:
        modes = [cfg["pooling_mode"]] if isinstance(cfg["pooling_mode"], str) else list(cfg["pooling_mode"])
    else:
        modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens") for k, v in cfg.items()
                 if k.startswith("pooling_mode_") and v]
    dimension = int(cfg.get("embedding_dimension") or cfg["word_embedding_dimension"])
    return kinds, modes, dimension


def check_exportable(model_path: str) -> dict:
    """The pipeline facts the export needs (max_seq_length); raises NotExportable otherwise."""
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise NotExportable(f"{model_path} is not a local model folder")
    try:
        kinds, modes, dimension = pooling_facts(folder)
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as e:
        raise NotExportable(f"{model_path}: cannot read the sentence-transformers pipeline ({e})") from None
    if kinds[:2] != ["Transformer", "Pooling"] or not set(kinds[2:]) <= {"Normalize"}:
        raise NotExportable(f"{model_path}: pipeline {kinds} is not Transformer -> Pooling (-> Normalize)")
    if modes != ["mean"]:
        raise NotExportable(f"{model_path}: only mean pooling is exported, found {modes or 'none'}")
    max_len = 512
    try:
        max_len = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        try:  # sentence-transformers 6 keeps it as the tokenizer's model_max_length
            max_len = int(json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        max_pos = int(json.loads((folder / "config.json").read_text()).get("max_position_embeddings", max_len))
        max_len = min(max_len, max_pos)
    except (OSError, ValueError):
        pass
    return {"max_seq_length": max_len, "dimension": dimension}


FINGERPRINTS_FILE = "fingerprints.json"
_MAX_FINGERPRINTS = 64


def weights_fingerprint(model_path: str, cache_root: str | Path | None = None) -> str:
    """sha256 of the weight files: a changed model gets a new export folder.

    Hashing 90 MB of weights took ~0.25 s of every model load (each ingest, bot start and
    `flytegpt search`), so the digest is remembered in `fingerprints.json` under the cache root,
    keyed by each file's path, size, mtime and inode: a file rewritten in place gets a new key.
    A cache that cannot be written only means hashing again next time.
    """
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise NotExportable(f"{model_path}: no weight file (*.safetensors or pytorch_model*.bin)")
    stats = [(str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino) for f in files for st in [f.stat()]]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:32]
    memo_file = (Path(cache_root) if cache_root else default_cache_root()) / FINGERPRINTS_FILE
    memo = read_json_dict(memo_file)
    if isinstance(memo.get(key), str):
        return memo[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    digest = h.hexdigest()
    memo = {k: v for k, v in list(memo.items())[-(_MAX_FINGERPRINTS - 1):]}
    memo[key] = digest
    try:
        write_json_atomic(memo_file, memo)
    except OSError as e:
        log.debug("could not remember the fingerprint in %s: %s", memo_file, e)
    return digest


def export_dir(model_id: str, model_path: str, cache_root: str | Path | None = None) -> Path:
    """The cache folder of the model's export."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "__", model_id).strip("_") or "model"
    root = Path(cache_root) if cache_root else default_cache_root()
    return root / f"{slug}-{weights_fingerprint(model_path, root)[:12]}-fp32-v{EXPORT_VERSION}"


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (MODEL_FILE, TOKENIZER_FILE, META_FILE))


def ensure_export(model_id: str, model_path: str, cache_root: str | Path | None = None) -> Path:
    """The cached export of `model_path`, made now if missing (once per model and machine)."""
    facts = check_exportable(model_path)
    target = export_dir(model_id, model_path, cache_root)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared (an image, a volume)
    try:
        log.info("exporting %s to ONNX in %s (once per model)", model_id, target)
        export_fp32(model_path, tmp, max_seq_length=facts["max_seq_length"], model_id=model_id)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # a concurrent export won only if it is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _torch_export(model_path: str, onnx_file: Path):
    """Transformer + mean pooling + L2 norm as one ONNX graph; returns (tokenizer, model config)."""
    import inspect
    import warnings

    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not getattr(tokenizer, "is_fast", False):
        raise NotExportable(f"{model_path}: no fast tokenizer (tokenizer.json) to run without transformers")
    # eager attention exports as plain MatMul/Softmax, which OpenVINO fuses into its attention kernel
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    class Pooled(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if takes_types else {}
            hidden = self.m(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    dummy = torch.ones(2, 16, dtype=torch.long)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(model), (dummy, torch.ones_like(dummy)), str(onnx_file),
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "embedding": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    return tokenizer, model.config


def _write_meta(out: Path, tokenizer, model_config, *, model_id: str, max_seq_length: int) -> None:
    import onnx
    import torch

    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    meta = {
        "source_model": model_id,
        "export_version": EXPORT_VERSION,
        "quantization": "none",
        "max_seq_length": max_seq_length,
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        "dimension": int(model_config.hidden_size),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "sha256": hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest(),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1))


def export_fp32(model_path: str, out: Path, *, max_seq_length: int, model_id: str = "") -> None:
    """The plain fp32 graph, for OpenVINO: it fuses the graph itself and picks its compute precision."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, config = _torch_export(model_path, out / MODEL_FILE)
    _write_meta(out, tokenizer, config, model_id=model_id, max_seq_length=max_seq_length)


class ExportedGraph:
    """What every runner of an export reads from its folder: the meta, the tokenizer, and the
    texts as padded batches.

    The whole call is tokenised at once (Rust, parallel) and batches are formed by token
    count, longest first, so each batch is padded only to its own longest text, rounded up to
    a multiple of WIDTH_MULTIPLE: OpenVINO keeps kernels and buffers per input shape, and one
    shape per token count grew an ingest's memory with the corpus (tests/bench/bench_memory.py:
    -30 MiB RSS over 16,000 texts at 8, within noise in speed).
    """

    WIDTH_MULTIPLE = 8

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.meta = json.loads((self.folder / META_FILE).read_text())
        self.max_seq_length = int(self.meta["max_seq_length"])
        self.dimension = int(self.meta["dimension"])
        self.pad_id = int(self.meta.get("pad_token_id", 0))
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.tokenizer.no_padding()

    def batches(self, texts: Sequence[str], batch_size: int):
        """(row indices, input_ids, attention_mask) per batch."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = -(-int(lengths[idx[0]]) // self.WIDTH_MULTIPLE) * self.WIDTH_MULTIPLE
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            yield idx, ids, mask
