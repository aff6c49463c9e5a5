"""The index artifact: the one owner of its format (ingest writes it, the bot reads it).

    <store>/<version>/manifest.json   format, model id + dimension + normalisation, index type,
                                      chunk count, counts per source, stats, sha256 + size of every file
    <store>/<version>/dense.faiss     faiss.serialize_index bytes (inner product on normalised vectors)
    <store>/<version>/chunks.jsonl.gz one Chunk.to_dict() per line, row i = FAISS id i = BM25 doc i
    <store>/<version>/keyword/...     bm25s arrays (.npy, allow_pickle=False) + JSON
    <store>/LATEST                    the published version id, written last, atomically

No pickle anywhere: everything is JSON, .npy of plain dtypes, or FAISS's own format.
The manifest is written after every other file of a version, and LATEST after a
version has been opened and verified, so a reader that follows LATEST always finds a
complete version. A version id is `<UTC time>-<8 hex of the content hash>`: sortable,
and the same content written in the same second is the same version.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from flytegpt.ingest.keyword import KeywordIndex
from flytegpt.ingest.models import Chunk
from flytegpt.ingest.store import atomic_write, get_fs, is_local, join, list_dir, read_bytes

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"
DENSE_FILE = "dense.faiss"
CHUNKS_FILE = "chunks.jsonl.gz"
KEYWORD_DIR = "keyword"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
INDEX_TYPES = ("flat", "ivf", "hnsw")
# IVF: lists probed per query and k-means settings, chosen with tests/bench/bench_index.py
IVF_NPROBE = 32
IVF_TRAIN_PER_LIST = 40
IVF_TRAIN_ITERATIONS = 10
_CHUNKS_PER_WRITE = 1024  # chunks serialised per write to the gzip stream of chunks.jsonl.gz
_GZIP_LEVEL = 6
_GZIP_HEADER = gzip.compress(b"", compresslevel=_GZIP_LEVEL, mtime=0)[:10]  # gzip.compress's own header
_VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


class ArtifactError(Exception):
    """An index version that must not be served; the message says which file or field and why."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    dimension: int
    normalized: bool = True


@dataclass
class IndexVersion:
    version: str
    manifest: dict[str, Any]
    chunks: list[Chunk]
    dense: "faiss.Index"
    keyword: KeywordIndex
    device: str = field(default="cpu")  # where FAISS searches: "cpu" or "gpu"

    @property
    def model(self) -> ModelInfo:
        m = self.manifest["model"]
        return ModelInfo(m["model_id"], int(m["dimension"]), bool(m["normalized"]))

    def __len__(self) -> int:
        return len(self.chunks)


# ---------------------------------------------------------------- writing


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu (or a broken CUDA setup)."""
    import faiss

    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # noqa: BLE001 - a broken driver means CPU, not a failed ingest
        return 0


def choose_index_type(n: int, index_type: str, approximate_threshold: int) -> str:
    """'auto': exact (flat) below the threshold, IVF above it.

    IVF over HNSW, measured at 1M real-structured vectors on 2 cores
    (tests/bench/bench_index.py): similar query latency at recall@10 >= 0.95, but a build
    of minutes instead of ~10+ minutes, and no graph memory on top of the vectors.
    """
    if index_type == "auto":
        return "ivf" if n >= approximate_threshold else "flat"
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index_type {index_type!r} ({', '.join(('auto',) + INDEX_TYPES)})")
    return index_type


def ivf_nlist(n: int) -> int:
    """~4 sqrt(n) lists (4,000 at 1M), at least 39 training points each (FAISS's minimum)."""
    return max(1, min(int(4 * n**0.5), n // 39))


def _train_and_add(index, vectors: np.ndarray, train: np.ndarray):
    """Train + add on all GPUs when FAISS has any (falls back to CPU, logged), else on CPU."""
    import faiss

    gpus = gpu_count()
    if gpus > 0:
        try:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
            gpu_index.train(train)
            gpu_index.add(vectors)
            log.info("FAISS: built the index on %d GPU(s)", gpus)
            return faiss.index_gpu_to_cpu(gpu_index), "gpu"
        except Exception as e:  # noqa: BLE001 - a broken CUDA setup must not stop the ingest
            log.warning("FAISS: building on GPU failed (%s); building on CPU", e)
    else:
        log.info("FAISS: building the index on CPU (no GPU)")
    index.train(train)
    index.add(vectors)
    return index, "cpu"


def build_dense_index(vectors: np.ndarray, index_type: str = "auto", approximate_threshold: int = 200_000):
    """The FAISS index for `vectors` and its manifest entry (type, parameters, where it was built)."""
    import faiss

    n, d = vectors.shape
    index_type = choose_index_type(n, index_type, approximate_threshold)
    params: dict[str, Any] = {}
    built_on = "cpu"
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
        if n:
            index.add(vectors)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
        if n:
            index.add(vectors)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:  # ivf
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = IVF_TRAIN_ITERATIONS
        rng = np.random.default_rng(0)  # the same vectors give the same index
        size = min(n, IVF_TRAIN_PER_LIST * nlist)
        train = vectors if size == n else vectors[np.sort(rng.choice(n, size, replace=False))]
        if n:
            index, built_on = _train_and_add(index, vectors, train)
        nprobe = min(nlist, IVF_NPROBE)
        index.nprobe = nprobe
        params = {"nlist": nlist, "nprobe": nprobe, "train_size": int(size)}
    info = {"type": index_type, "metric": "inner_product", "ntotal": int(index.ntotal), **params}
    if index_type != "flat":
        info["built_on"] = built_on
    return index, info


def _chunks_bytes(chunks: list[Chunk]) -> bytes:
    """chunks.jsonl.gz, compressed as it is serialised: only the compressed bytes are ever whole.

    Byte for byte what gzip.compress(whole JSON Lines text, 6, mtime=0) gives (its header, one
    raw deflate stream, CRC-32 + size trailer), so a version's content hash does not depend on
    how it was written; mtime=0: the same chunks give the same bytes.
    """
    out = io.BytesIO()
    out.write(_GZIP_HEADER)
    deflate = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = size = 0
    for start in range(0, len(chunks), _CHUNKS_PER_WRITE):
        part = chunks[start : start + _CHUNKS_PER_WRITE]
        data = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in part).encode("utf-8")
        crc, size = zlib.crc32(data, crc), size + len(data)
        out.write(deflate.compress(data))
    out.write(deflate.flush())
    out.write(struct.pack("<LL", crc, size & 0xFFFFFFFF))
    return out.getvalue()


def _all_finite(vectors: np.ndarray, rows: int = 65_536) -> bool:
    """np.isfinite in row blocks: its boolean temporary stays small at a million vectors."""
    return all(np.isfinite(vectors[i : i + rows]).all() for i in range(0, len(vectors), rows))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_version(
    store: str,
    chunks: list[Chunk],
    vectors: np.ndarray,
    model: ModelInfo,
    *,
    index_type: str = "auto",
    approximate_threshold: int = 200_000,
    stats: dict | None = None,
    keyword: KeywordIndex | None = None,
) -> str:
    """Write a complete version folder (manifest last) and return its id. Does not publish.

    `keyword`: the chunks' BM25 index, when the caller built it already (built here otherwise).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(chunks), model.dimension):
        raise ValueError(
            f"vectors have shape {vectors.shape}, expected ({len(chunks)}, {model.dimension})"
        )
    if not _all_finite(vectors):
        raise ValueError("vectors contain NaN or infinite values")
    if keyword is not None and keyword.num_docs != len(chunks):
        raise ValueError(f"the keyword index has {keyword.num_docs} documents for {len(chunks)} chunks")

    dense, index_info = build_dense_index(vectors, index_type, approximate_threshold)
    fs, root = get_fs(store)
    # The dense index goes to a temporary file and is hashed from there: at 1M vectors it is
    # ~1.5 GB, and serialising it to bytes would hold it in memory twice more.
    tmp_dir = root if is_local(fs) else None
    if tmp_dir:
        os.makedirs(tmp_dir, exist_ok=True)
    fd, dense_tmp = tempfile.mkstemp(prefix=".tmp-dense-", suffix=".faiss", dir=tmp_dir)
    os.close(fd)
    try:
        faiss.write_index(dense, dense_tmp)
        # The FAISS copy of the vectors is on disk now; drop it before BM25 builds its own arrays.
        del dense
        if keyword is None:
            keyword = KeywordIndex.build([c.embed_text for c in chunks])
        return _write_files(fs, root, store, chunks, keyword, dense_tmp, model, index_info, stats)
    finally:
        if os.path.exists(dense_tmp):
            os.unlink(dense_tmp)


def _write_files(fs, root: str, store: str, chunks: list[Chunk], keyword: KeywordIndex, dense_tmp: str,
                 model: ModelInfo, index_info: dict, stats: dict | None) -> str:
    files: dict[str, bytes] = {CHUNKS_FILE: _chunks_bytes(chunks)}
    files.update({f"{KEYWORD_DIR}/{name}": data for name, data in keyword.to_files().items()})
    entries = {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()}
    entries[DENSE_FILE] = {"sha256": _file_sha256(dense_tmp), "bytes": os.path.getsize(dense_tmp)}
    entries = dict(sorted(entries.items()))

    content = hashlib.sha256(
        json.dumps([model.model_id, model.dimension, entries], sort_keys=True).encode()
    ).hexdigest()
    now = datetime.now(timezone.utc)
    version = now.strftime("%Y%m%dT%H%M%SZ") + "-" + content[:8]

    folder = join(root, version)
    if read_bytes(fs, join(folder, MANIFEST)) is not None:
        log.info("index version %s already exists (same content)", version)
        return version

    manifest = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": now.isoformat(timespec="seconds"),
        "model": {"model_id": model.model_id, "dimension": model.dimension, "normalized": model.normalized},
        "index": index_info,
        "chunk_count": len(chunks),
        "counts": dict(sorted(Counter(c.source_id.split(":", 1)[0] for c in chunks).items())),
        "stats": stats or {},
        "files": entries,
    }
    for name, data in files.items():
        atomic_write(fs, join(folder, name), data)
    if is_local(fs):
        os.makedirs(folder, exist_ok=True)
        os.replace(dense_tmp, join(folder, DENSE_FILE))  # same filesystem: the temp file is in the store
    else:
        fs.put_file(dense_tmp, join(folder, DENSE_FILE))
    atomic_write(fs, join(folder, MANIFEST), json.dumps(manifest, indent=1).encode())
    log.info("wrote index version %s (%d chunks, %s index) to %s", version, len(chunks), index_info["type"], store)
    return version


def publish(store: str, version: str) -> None:
    """Point LATEST at `version`, after opening and verifying it; a bad version leaves LATEST alone."""
    open_version(store, version)
    fs, root = get_fs(store)
    atomic_write(fs, join(root, LATEST), (version + "\n").encode())
    log.info("published index version %s in %s", version, store)


# ---------------------------------------------------------------- reading


def read_latest(store: str) -> str | None:
    """The published version id, or None when nothing has been published yet."""
    fs, root = get_fs(store)
    fs.invalidate_cache(root)
    data = read_bytes(fs, join(root, LATEST))
    if data is None:
        return None
    version = data.decode("utf-8", "replace").strip()
    return version or None


def list_versions(store: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first."""
    fs, root = get_fs(store)
    fs.invalidate_cache()  # object stores: a cached listing of a version folder may predate its manifest
    names = sorted(
        os.path.basename(e["name"].rstrip("/"))
        for e in list_dir(fs, root)
        if e.get("type") == "directory"
    )
    return [n for n in names if _VERSION_RE.match(n) and fs.exists(join(root, n, MANIFEST))]


def prune(store: str, keep: int = 3) -> list[str]:
    """Delete all but the newest `keep` versions; LATEST's version is never deleted."""
    fs, root = get_fs(store)
    versions = list_versions(store)
    latest = read_latest(store)
    keep_set = set(versions[-keep:]) if keep > 0 else set()
    if latest:
        keep_set.add(latest)
    removed = [v for v in versions if v not in keep_set]
    for version in removed:
        if read_latest(store) == version:  # published meanwhile: keep it
            continue
        fs.rm(join(root, version), recursive=True)
        log.info("pruned index version %s", version)
    return removed


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file(version: str, name: str, path: str, entry: dict) -> str | None:
    """None if the local file matches the manifest entry, else what is wrong with it."""
    if not os.path.isfile(path):
        return f"version {version}: file {name} is missing"
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        what = "truncated" if size < entry["bytes"] else "larger than recorded"
        return f"version {version}: file {name} is {what}: expected {entry['bytes']} bytes, found {size}"
    digest = _file_sha256(path)
    if digest != entry["sha256"]:
        return f"version {version}: checksum mismatch in {name}: expected sha256 {entry['sha256']}, found {digest}"
    return None


def _download(fs, remote: str, local: str) -> None:
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.part-{os.getpid()}"
    try:
        fs.get_file(remote, tmp)
        os.replace(tmp, local)
    except FileNotFoundError:
        pass  # reported as missing by the check that follows
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_manifest(fs, folder: str, version: str, store: str) -> dict[str, Any]:
    data = read_bytes(fs, join(folder, MANIFEST))
    if data is None:
        raise ArtifactError(f"version {version}: {MANIFEST} not found in {store} (incomplete or unknown version)")
    try:
        manifest = json.loads(data)
        manifest["model"]["model_id"], manifest["model"]["dimension"], manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"version {version}: {MANIFEST} is not a valid manifest ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"version {version}: {MANIFEST} format_version: expected {FORMAT_VERSION}, "
            f"found {manifest.get('format_version')}"
        )
    if manifest.get("version") != version:
        raise ArtifactError(f"version {version}: {MANIFEST} version: expected {version}, found {manifest.get('version')}")
    return manifest


def read_manifest(store: str, version: str) -> dict[str, Any]:
    """A version's manifest alone (counts, model, created_at), checked but without its files:
    for listing the versions of a store, not for serving one."""
    check_version_id(version, store)
    fs, root = get_fs(store)
    return _read_manifest(fs, join(root, version), version, store)


def _check_model(manifest: dict, version: str, expect_model: str | None, expect_dimension: int | None) -> None:
    model = manifest["model"]
    if expect_model is not None and model["model_id"] != expect_model:
        raise ArtifactError(
            f"version {version}: model mismatch: expected {expect_model}, the index was built with {model['model_id']}"
        )
    if expect_dimension is not None and int(model["dimension"]) != expect_dimension:
        raise ArtifactError(
            f"version {version}: dimension mismatch: expected {expect_dimension}, the index has {model['dimension']}"
        )


def _load_chunks(path: str, version: str) -> list[Chunk]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [Chunk.from_dict(json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, TypeError, EOFError) as e:
        raise ArtifactError(f"version {version}: {CHUNKS_FILE} cannot be read ({e})") from None


def _apply_search_params(dense, info: dict) -> None:
    """Search settings recorded in the manifest (FAISS does not keep all of them in the file)."""
    import faiss

    kind = info.get("type")
    if kind == "hnsw":
        dense.hnsw.efSearch = int(info.get("efSearch", HNSW_EF_SEARCH))
    elif kind == "ivf":
        ivf = faiss.extract_index_ivf(dense)
        ivf.nprobe = int(info.get("nprobe", IVF_NPROBE))
        ivf.make_direct_map()  # reconstruct(): exact scores for keyword-only candidates


def _to_search_device(index):
    """faiss-gpu when GPUs are present (flat and IVF indexes), CPU otherwise; logged either way."""
    import faiss

    gpus = gpu_count()
    if gpus > 0 and isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat)):
        try:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
            log.info("FAISS: searching on %d GPU(s)", gpus)
            return gpu_index, "gpu"
        except Exception as e:  # a broken CUDA setup must not stop the bot
            log.warning("FAISS: moving the index to GPU failed (%s); searching on CPU", e)
            return index, "cpu"
    log.info("FAISS: searching on CPU (%s)", "no GPU" if gpus == 0 else f"{type(index).__name__} stays on CPU")
    return index, "cpu"


def open_version(
    store: str,
    version: str | None = None,
    *,
    expect_model: str | None = None,
    expect_dimension: int | None = None,
    cache_dir: str | None = None,
) -> IndexVersion:
    """Open and verify a version (LATEST by default): checksums, model, dimension, counts.

    Remote files are downloaded to `cache_dir/<version>/` when given (kept for the next
    start; a cached copy that fails its checksum is fetched again), else to a temporary
    folder removed after loading.
    """
    import faiss

    fs, root = get_fs(store)
    if version is None:
        version = read_latest(store)
        if version is None:
            raise ArtifactError(f"no published index in {store}: {LATEST} not found (run `flytegpt ingest` first)")
    folder = join(root, version)
    manifest = _read_manifest(fs, folder, version, store)
    _check_model(manifest, version, expect_model, expect_dimension)
    entries: dict[str, dict] = manifest["files"]
    for required in (DENSE_FILE, CHUNKS_FILE, f"{KEYWORD_DIR}/tokenizer.json"):
        if required not in entries:
            raise ArtifactError(f"version {version}: {MANIFEST} does not list {required}")

    tmp: str | None = None
    if is_local(fs):
        base = folder
    else:
        if cache_dir:
            base = os.path.join(os.path.abspath(cache_dir), version)
        else:
            base = tmp = tempfile.mkdtemp(prefix="flytegpt-index-")
    try:
        for name, entry in entries.items():
            local = os.path.join(base, *name.split("/"))
            problem = _check_file(version, name, local, entry)
            if problem and not is_local(fs):  # not cached yet, or a stale/partial copy
                _download(fs, join(folder, name), local)
                problem = _check_file(version, name, local, entry)
            if problem:
                raise ArtifactError(problem)

        dimension = int(manifest["model"]["dimension"])
        count = int(manifest["chunk_count"])
        try:
            dense = faiss.read_index(os.path.join(base, DENSE_FILE))
        except RuntimeError as e:
            raise ArtifactError(f"version {version}: {DENSE_FILE} is not a FAISS index ({e})") from None
        if dense.d != dimension:
            raise ArtifactError(f"version {version}: {DENSE_FILE} dimension: expected {dimension} (manifest), found {dense.d}")
        if dense.ntotal != count:
            raise ArtifactError(f"version {version}: {DENSE_FILE} ntotal: expected {count} (chunk_count), found {dense.ntotal}")
        chunks = _load_chunks(os.path.join(base, CHUNKS_FILE), version)
        if len(chunks) != count:
            raise ArtifactError(f"version {version}: {CHUNKS_FILE} rows: expected {count} (chunk_count), found {len(chunks)}")
        try:
            keyword = KeywordIndex.load(os.path.join(base, KEYWORD_DIR))
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(f"version {version}: {KEYWORD_DIR}/ cannot be loaded ({e})") from None
        if keyword.num_docs != count:
            raise ArtifactError(
                f"version {version}: {KEYWORD_DIR}/ documents: expected {count} (chunk_count), found {keyword.num_docs}"
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    _apply_search_params(dense, manifest["index"])
    dense, device = _to_search_device(dense)
    return IndexVersion(version=version, manifest=manifest, chunks=chunks, dense=dense, keyword=keyword, device=device)


def version_summary(index: IndexVersion) -> str:
    """One line for logs and the CLI."""
    m = index.manifest
    return (
        f"{index.version}: {m['chunk_count']} chunks, model {m['model']['model_id']} "
        f"({m['model']['dimension']}d), {m['index']['type']} index on {index.device}"
    )


__all__ = [
    "ArtifactError", "ModelInfo", "IndexVersion", "write_version", "publish", "read_latest",
    "list_versions", "open_version", "read_manifest", "prune", "version_summary", "FORMAT_VERSION",
    "choose_index_type", "gpu_count", "ivf_nlist", "build_dense_index",
]
