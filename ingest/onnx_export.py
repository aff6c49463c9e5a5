"""Local ONNX exports of a sentence-transformers model, and the onnxruntime encoder for int8.

Two exports, both made here from the model folder on disk with torch's ONNX exporter (no
download, no optimum), both Transformer -> mean pooling -> L2 norm in one graph:
- "fp32": the plain graph. OpenVINO runs it (ingest/openvino_runner.py), fusing it and
  computing in bf16 on CPUs that have it: ~2.7x PyTorch fp32 on 2 cores with vectors within
  cosine 0.9999 of it, so they keep the plain model id.
- "int8": fused by onnxruntime's BERT optimizer, then dynamically quantised (int8 weights
  per channel, activations per tensor per batch): ~2.5x PyTorch fp32, but the vectors move
  (mean cosine 0.994) and dev MRR@10 moves by 0.01-0.02 from build to build, so they get
  their own model id ("#onnx-int8-v2"). A text's int8 vector also moves a little with its
  batch neighbours: the activation scale is the batch's.

Each is cached under `<cache root>/<model slug>-<weights sha256[:12]>[-fp32]-v<N>/`
(model.onnx, tokenizer.json, meta.json), written to a temporary folder first and then
renamed, so a crashed or concurrent export never leaves a half-written model behind.
Only the plain Transformer -> mean Pooling (-> Normalize) pipeline is exported; other
models stay on PyTorch.
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

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the int8 export recipe changes: vectors may change with it
FP32_EXPORT_VERSION = 1  # the same for the fp32 graph OpenVINO runs
QUANTIZATION = "int8"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
# Model-id suffix: int8 vectors are not torch vectors, and a new export recipe may move them,
# so the embedding cache and the manifest must tell them apart.
ONNX_SUFFIX = f"#onnx-{QUANTIZATION}-v{EXPORT_VERSION}"


class NotExportable(ValueError):
    """The model is not a plain Transformer + mean pooling pipeline (or has no local folder)."""


def default_cache_root() -> Path:
    """$FLYTEGPT_ONNX_CACHE, else ~/.cache/flytegpt/onnx (follows $XDG_CACHE_HOME)."""
    env = os.environ.get("FLYTEGPT_ONNX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flytegpt" / "onnx"


def onnx_runtime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def check_exportable(model_path: str) -> dict:
    """The pipeline facts the export needs (max_seq_length); raises NotExportable otherwise."""
    folder = Path(model_path)
    if not (folder / "config.json").is_file():
        raise NotExportable(f"{model_path} is not a local model folder")
    try:
        modules = json.loads((folder / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        pcfg = json.loads((folder / pooling["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise NotExportable(f"{model_path}: cannot read the sentence-transformers pipeline ({e})") from None
    if kinds[:2] != ["Transformer", "Pooling"] or not set(kinds[2:]) <= {"Normalize"}:
        raise NotExportable(f"{model_path}: pipeline {kinds} is not Transformer -> Pooling (-> Normalize)")
    other = [k for k, v in pcfg.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if not pcfg.get("pooling_mode_mean_tokens") or other:
        raise NotExportable(f"{model_path}: only mean pooling is exported, found {other or 'none'}")
    max_len = 512
    try:
        max_len = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        pass
    try:
        max_pos = int(json.loads((folder / "config.json").read_text()).get("max_position_embeddings", max_len))
        max_len = min(max_len, max_pos)
    except (OSError, ValueError):
        pass
    return {"max_seq_length": max_len, "dimension": int(pcfg["word_embedding_dimension"])}


def weights_fingerprint(model_path: str) -> str:
    """sha256 of the weight files: a changed model gets a new export folder."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise NotExportable(f"{model_path}: no weight file (*.safetensors or pytorch_model*.bin)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


KINDS = ("int8", "fp32")


def export_dir(model_id: str, model_path: str, cache_root: str | Path | None = None, kind: str = "int8") -> Path:
    """The cache folder of one export: the int8 graph (onnxruntime) or the fp32 graph (OpenVINO)."""
    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r} ({', '.join(KINDS)})")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "__", model_id).strip("_") or "model"
    root = Path(cache_root) if cache_root else default_cache_root()
    fingerprint = weights_fingerprint(model_path)[:12]
    if kind == "int8":
        return root / f"{slug}-{fingerprint}-v{EXPORT_VERSION}"
    return root / f"{slug}-{fingerprint}-fp32-v{FP32_EXPORT_VERSION}"


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (MODEL_FILE, TOKENIZER_FILE, META_FILE))


def ensure_export(model_id: str, model_path: str, cache_root: str | Path | None = None, kind: str = "int8") -> Path:
    """The cached export of `model_path`, made now if missing (fp32 ~5 s, int8 ~10 s on 2 cores)."""
    facts = check_exportable(model_path)
    target = export_dir(model_id, model_path, cache_root, kind)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared (an image, a volume)
    try:
        log.info("exporting %s to %s ONNX in %s (once per model)", model_id, kind, target)
        export = export_int8 if kind == "int8" else export_fp32
        export(model_path, tmp, max_seq_length=facts["max_seq_length"], model_id=model_id)
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
    # eager attention exports as plain MatMul/Softmax, which both onnxruntime's BERT optimizer
    # and OpenVINO fuse into their own attention kernels
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


def _write_meta(out: Path, tokenizer, model_config, *, model_id: str, quantization: str,
                max_seq_length: int, export_version: int, **extra) -> None:
    import onnx
    import torch

    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    meta = {
        "source_model": model_id,
        "export_version": export_version,
        "quantization": quantization,
        "max_seq_length": max_seq_length,
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        "dimension": int(model_config.hidden_size),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "sha256": hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest(),
        **extra,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1))


def export_fp32(model_path: str, out: Path, *, max_seq_length: int, model_id: str = "") -> None:
    """The plain fp32 graph, for OpenVINO: it fuses the graph itself and picks bf16 where the CPU has it."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, config = _torch_export(model_path, out / MODEL_FILE)
    _write_meta(out, tokenizer, config, model_id=model_id, quantization="none",
                max_seq_length=max_seq_length, export_version=FP32_EXPORT_VERSION)


def export_int8(model_path: str, out: Path, *, max_seq_length: int, model_id: str = "") -> None:
    """Export to ONNX, fuse with onnxruntime's BERT optimizer, then quantise weights to int8.

    Measured on 2 cores (same run): eager attention exported, then fused by onnxruntime's
    BERT optimizer (Attention, SkipLayerNorm, BiasGelu), then int8 is ~1.7x the unfused
    int8 graph. Per-channel weights matter: per-tensor int8 drops the mean cosine to the
    fp32 vectors to ~0.93 on this model, per-channel keeps it at ~0.994.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.fp32.onnx"
    tokenizer, config = _torch_export(model_path, fp32)
    fused = out / "model.fused.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # optimizer and quantiser log one line per tensor on the root logger
    try:
        opt = optimizer.optimize_model(
            str(fp32), model_type="bert", num_heads=int(getattr(config, "num_attention_heads", 0)),
            hidden_size=int(getattr(config, "hidden_size", 0)),
        )
        fusions = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(fused))
        del opt
        quantize_dynamic(
            str(fused), str(out / MODEL_FILE), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops have no inferred type
        )
    finally:
        root.setLevel(level)
    fused.unlink()
    fp32.unlink()
    _write_meta(out, tokenizer, config, model_id=model_id, quantization=QUANTIZATION,
                max_seq_length=max_seq_length, export_version=EXPORT_VERSION, fusions=fusions,
                onnxruntime=onnxruntime.__version__)


class ExportedGraph:
    """What every runner of an export reads from its folder: the meta, the tokenizer, and the
    texts as padded batches.

    The whole call is tokenised at once (Rust, parallel) and batches are formed by token
    count, longest first, so each batch is padded only to its own longest text.
    """

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
            width = int(lengths[idx[0]])
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            yield idx, ids, mask


class OnnxEncoder(ExportedGraph):
    """Runs an int8 export with onnxruntime."""

    def __init__(self, folder: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(folder)
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), opts, providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """Vectors in input order."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        for idx, ids, mask in self.batches(texts, batch_size):
            out[idx] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out
