"""The index artifact: the one owner of its format (ingest writes it, the bot reads it).

    <store>/<version>/manifest.json   format, model id + dimension + normalisation, index type,
                                      chunk count, counts per source, per Slack channel and per
                                      top-level folder, stats, sha256 + size of every file
    <store>/<version>/dense.faiss     faiss.serialize_index bytes (inner product on normalised vectors)
    <store>/<version>/chunks.jsonl.gz one Chunk.to_dict() per line, row i = FAISS id i = BM25 doc i
                                      (but message_urls, which go to message-urls.json.gz)
    <store>/<version>/keyword/...     bm25s arrays (.npy, allow_pickle=False) + JSON
    <store>/LATEST                    the published version id, written last, atomically

No pickle anywhere: everything is JSON, .npy of plain dtypes, or FAISS's own format.
The manifest is written after every other file of a version, and LATEST after a
version has been opened and verified, so a reader that follows LATEST always finds a
complete version. A version id is `<UTC time>-<8 hex of the content hash>`: sortable,
and the same content written in the same second is the same version.
"""

from __future__ import annotations

import dataclasses
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
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from flytegpt.ingest.keyword import KeywordIndex
from flytegpt.ingest.models import Chunk, ModelInfo
from flytegpt.ingest.store import (WORK_DIR, atomic_write, create_temp, get_fs, is_local, join, list_dir, modified_time,
                                   read_bytes, store_lock)

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"
DENSE_FILE = "dense.faiss"
CHUNKS_FILE = "chunks.jsonl.gz"
# Slack chunks' per-message permalinks ({"<row>": [url, ...]}), beside the chunk table rather than in
# its rows: a reader that predates them builds Chunk(**row) and would refuse a row with a key it does
# not know, while it verifies and ignores a file it does not read. So a bot rolled back to an older
# release still serves a version written by this one (its quotes then link the thread).
MESSAGE_URLS_FILE = "message-urls.json.gz"
KEYWORD_DIR = "keyword"
INDEX_TYPES = ("flat", "ivf")
PUBLISH_LOCK = "publish.lock"
DEFAULT_KEEP_VERSIONS = 7  # [index] keep_versions
# IVF: lists probed per query and k-means settings, chosen with tests/bench/bench_index.py
IVF_NPROBE = 32
IVF_TRAIN_PER_LIST = 40
IVF_TRAIN_ITERATIONS = 10
_CHUNKS_PER_WRITE = 1024  # chunks serialised per write to the gzip stream of chunks.jsonl.gz
# 3, not gzip's 6: a third of the time (0.07 s vs 0.19 s for the eval corpus's 10 MB of chunks,
# part of every re-ingest) for a file 17% bigger
_GZIP_LEVEL = 3
_GZIP_HEADER = gzip.compress(b"", compresslevel=_GZIP_LEVEL, mtime=0)[:10]  # gzip.compress's own header
_VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no separators, no leading dot
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(Exception):
    """An index version that must not be served; the message says which file or field and why."""


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
        return ModelInfo.from_dict(self.manifest["model"])

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


# FAISS's file of an IndexFlatIP (faiss/impl/index_write.cpp): fourcc, then the index header
# (d, ntotal, two unused 1<<20 fields, is_trained, metric), then the vectors as a counted array
_FLAT_IP_FOURCC = b"IxFI"
_FLAT_HEADER = struct.Struct("<4siqqqBiQ")
_UNUSED = 1 << 20
_METRIC_INNER_PRODUCT = 0  # faiss.METRIC_INNER_PRODUCT
_ROWS_PER_WRITE = 65_536


def write_flat_index(vectors: np.ndarray, path: str) -> None:
    """FAISS's flat inner-product index file, written from `vectors` themselves.

    `IndexFlatIP.add` copies every vector into the index only for `write_index` to write them
    out: at the end of an ingest, a second copy of all vectors (1.5 GB at a million) at the
    moment memory peaks. The bytes are FAISS's (`faiss.read_index` reads them; tests check they
    equal `faiss.write_index`'s), so readers never know the difference.
    """
    n, d = vectors.shape
    with open(path, "wb") as f:
        f.write(_FLAT_HEADER.pack(_FLAT_IP_FOURCC, d, n, _UNUSED, _UNUSED, 1, _METRIC_INNER_PRODUCT, n * d))
        for start in range(0, n, _ROWS_PER_WRITE):
            f.write(memoryview(np.ascontiguousarray(vectors[start : start + _ROWS_PER_WRITE], dtype="<f4")))


def _check_flat_file(path: str, count: int, dimension: int, version: str) -> None:
    """A flat index file is exactly its header and count x dimension floats, before FAISS reads it.

    FAISS trusts the lengths a file states and allocates them before it finds the file short: a
    109-byte file claiming 2^30 floats took 4 GiB, an OOM-killed bot that loads the
    same LATEST again after its restart. The checksums are the store's own, so they cannot tell."""
    with open(path, "rb") as f:
        head = f.read(_FLAT_HEADER.size)
    if len(head) < _FLAT_HEADER.size or head[:4] != _FLAT_IP_FOURCC:
        raise ArtifactError(f"version {version}: {DENSE_FILE} is not a FAISS flat inner-product index")
    _, d, n, *_, floats = _FLAT_HEADER.unpack(head)
    if d != dimension:
        raise ArtifactError(f"version {version}: {DENSE_FILE} dimension: expected {dimension} (manifest), found {d}")
    if n != count:
        raise ArtifactError(f"version {version}: {DENSE_FILE} ntotal: expected {count} (chunk_count), found {n}")
    size, expected = os.path.getsize(path), _FLAT_HEADER.size + 4 * count * dimension
    if floats != count * dimension or size != expected:
        raise ArtifactError(f"version {version}: {DENSE_FILE} holds {size:,} bytes and says it holds {floats:,} "
                            f"floats: {count} vectors of {dimension} are {expected:,} bytes")


def _row(chunk: Chunk) -> dict:
    """A chunk's row in chunks.jsonl.gz: its fields but message_urls (see MESSAGE_URLS_FILE)."""
    d = chunk.to_dict()
    d.pop("message_urls", None)
    return d


def _message_urls_bytes(chunks: list[Chunk]) -> bytes | None:
    urls = {str(i): list(c.message_urls) for i, c in enumerate(chunks) if c.message_urls}
    if not urls:
        return None
    return gzip.compress(json.dumps(urls, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                         _GZIP_LEVEL, mtime=0)


def _with_message_urls(chunks: list[Chunk], path: str, version: str) -> list[Chunk]:
    """The chunks with the links MESSAGE_URLS_FILE gives their rows; a file that cannot be read
    refuses the version (it passed its checksum, so it was written so)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            urls = json.load(f)
        if not isinstance(urls, dict):
            raise ValueError("not an object of rows")
        out = list(chunks)
        for row, links in urls.items():
            i = int(row)
            if not (0 <= i < len(out)) or not isinstance(links, list) or not all(isinstance(u, str) for u in links):
                raise ValueError(f"row {row!r:.40}: expected a chunk row and a list of links")
            out[i] = dataclasses.replace(out[i], message_urls=tuple(links))
        return out
    except (OSError, ValueError, EOFError) as e:
        raise ArtifactError(f"version {version}: {MESSAGE_URLS_FILE} cannot be read ({e})") from None


def _chunks_bytes(chunks: list[Chunk]) -> bytes:
    """chunks.jsonl.gz, compressed as it is serialised: only the compressed bytes are ever whole.

    Byte for byte what gzip.compress(whole JSON Lines text, _GZIP_LEVEL, mtime=0) gives (its header, one
    raw deflate stream, CRC-32 + size trailer), so a version's content hash does not depend on
    how it was written; mtime=0: the same chunks give the same bytes.
    """
    out = io.BytesIO()
    out.write(_GZIP_HEADER)
    deflate = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    crc = size = 0
    for start in range(0, len(chunks), _CHUNKS_PER_WRITE):
        part = chunks[start : start + _CHUNKS_PER_WRITE]
        data = "".join(json.dumps(_row(c), ensure_ascii=False) + "\n" for c in part).encode("utf-8")
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
    sources_read_at: datetime | None = None,
    configured_channels: dict[str, list[str]] | None = None,
) -> str:
    """Write a complete version folder (manifest last) and return its id. Does not publish.

    `keyword`: the chunks' BM25 index, when the caller built it already (built here otherwise).
    `sources_read_at`: when the ingest began reading its sources; `publish` refuses to move
    LATEST from a version made of newer sources to this one (defaults to the write time).
    `configured_channels`: per Slack source, the channels its config names (a source reading
    every channel it can is left out): a channel taken out of that list is no loss to `publish`.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(chunks), model.dimension):
        raise ValueError(
            f"vectors have shape {vectors.shape}, expected ({len(chunks)}, {model.dimension})"
        )
    if not _all_finite(vectors):
        raise ValueError("vectors contain NaN or infinite values")
    if keyword is not None and keyword.num_docs != len(chunks):
        raise ValueError(f"the keyword index has {keyword.num_docs} documents for {len(chunks)} chunks")

    kind = choose_index_type(len(vectors), index_type, approximate_threshold)
    fs, root = get_fs(store)
    # The dense index goes to a temporary file and is hashed from there: at 1M vectors it is
    # ~1.5 GB, and serialising it to bytes would hold it in memory twice more.
    tmp_dir = root if is_local(fs) else None
    if tmp_dir:
        os.makedirs(tmp_dir, exist_ok=True)
    # in the store it is renamed into the version: created like every store file (create_temp)
    fd, dense_tmp = (create_temp(tmp_dir, ".tmp-dense-", ".faiss") if tmp_dir
                     else tempfile.mkstemp(prefix=".tmp-dense-", suffix=".faiss"))
    os.close(fd)
    try:
        if kind == "flat":
            write_flat_index(vectors, dense_tmp)
            index_info = {"type": "flat", "metric": "inner_product", "ntotal": len(vectors)}
        else:
            import faiss  # only here: loading it adds ~10 MiB to an ingest's peak

            dense, index_info = build_dense_index(vectors, kind, approximate_threshold)
            faiss.write_index(dense, dense_tmp)
            # The FAISS copy of the vectors is on disk now; drop it before BM25 builds its own arrays.
            del dense
        if keyword is None:
            keyword = KeywordIndex.build([c.embed_text for c in chunks], store=store)
        return _write_files(fs, root, store, chunks, keyword, dense_tmp, model, index_info, stats,
                            configured_channels or {}, sources_read_at)
    finally:
        if os.path.exists(dense_tmp):
            os.unlink(dense_tmp)


def _content_hash(model_id: str, dimension: int, entries: dict) -> str:
    """What a version holds (its model and every file's checksum), whatever its id and time."""
    return hashlib.sha256(json.dumps([model_id, dimension, entries], sort_keys=True).encode()).hexdigest()


def _latest_with_content(store: str, content: str) -> str | None:
    """The version LATEST names when it holds exactly `content`, else None.

    An ingest of unchanged sources then publishes nothing new: a new id for the same bytes
    every night would push the last different version, the one a rollback needs, out of
    `[index] keep_versions`.
    """
    try:
        latest = read_latest(store)
        if latest is None or not latest.endswith("-" + content[:8]):
            return None
        manifest = read_manifest(store, latest)
        model = manifest["model"]
        if _content_hash(model["model_id"], model["dimension"], manifest["files"]) != content:
            return None
        if file_problems(store, latest, manifest):  # a damaged LATEST is replaced, not published again
            return None
    except (ArtifactError, OSError, KeyError, TypeError):  # no usable LATEST: write a new version
        return None
    return latest


def _write_files(fs, root: str, store: str, chunks: list[Chunk], keyword: KeywordIndex, dense_tmp: str,
                 model: ModelInfo, index_info: dict, stats: dict | None,
                 configured_channels: dict[str, list[str]], sources_read_at: datetime | None) -> str:
    files: dict[str, bytes] = {CHUNKS_FILE: _chunks_bytes(chunks)}
    message_urls = _message_urls_bytes(chunks)
    if message_urls is not None:
        files[MESSAGE_URLS_FILE] = message_urls
    files.update({f"{KEYWORD_DIR}/{name}": data for name, data in keyword.to_files().items()})
    entries = {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()}
    entries[DENSE_FILE] = {"sha256": _file_sha256(dense_tmp), "bytes": os.path.getsize(dense_tmp)}
    entries = dict(sorted(entries.items()))

    content = _content_hash(model.model_id, model.dimension, entries)
    unchanged = _latest_with_content(store, content)
    if unchanged is not None:
        log.info("the index is unchanged: LATEST names %s, of the same content; no new version", unchanged)
        return unchanged
    now = datetime.now(timezone.utc)
    version = now.strftime("%Y%m%dT%H%M%SZ") + "-" + content[:8]

    folder = join(root, version)
    existing = read_bytes(fs, join(folder, MANIFEST))
    if existing is not None:  # made within the same second from the same content
        try:
            damaged = file_problems(store, version, json.loads(existing))
        except ValueError:
            damaged = ["an unreadable manifest"]
        if not damaged:
            log.info("index version %s already exists (same content)", version)
            return version
        log.warning("index version %s exists but is damaged (%s): writing it again", version, "; ".join(damaged))

    manifest = {
        "format_version": FORMAT_VERSION,
        "version": version,
        # to the microsecond: orders versions made within the same second (list_versions)
        "created_at": now.isoformat(timespec="microseconds"),
        "sources_read_at": (sources_read_at or now).astimezone(timezone.utc).isoformat(timespec="seconds"),
        "model": model.to_dict(),
        "index": index_info,
        "chunk_count": len(chunks),
        "counts": dict(sorted(Counter(c.source for c in chunks).items())),
        **part_counts(chunks),
        "configured_channels": {name: list(channels) for name, channels in sorted(configured_channels.items())},
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


# A Slack chunk's URL is its thread's permalink (ingest/sources/slack_export.py `permalink`), which
# holds the channel id in each of its forms: /archives/<id>/p<ts>, /client/<team>/<id>/thread/...,
# app_redirect?channel=<id>. Only a thread without any channel id ("slack:<ts>") has none.
_CHANNEL_IN_URL = re.compile(r"/archives/([^/?#]+)/p|/client/[^/?#]+/([^/?#]+)/thread/|[?&]channel=([^&#]+)")


def part_counts(chunks: list[Chunk]) -> dict[str, dict[str, dict]]:
    """The manifest's finer counts, for `_refuse_shrunk`: per source, its chunks per Slack channel
    (`channels`: {channel id: {"name", "chunks"}}, keyed by id so that a renamed channel read by
    id is the same channel) and per top-level folder of a docs or code source (`folders`: {folder:
    chunks}; files at the source's root are in no folder). A channel renamed, archived or left by
    the bot, or an include pattern that stopped matching one folder, empties one part of a source
    that still gives chunks: the per-source counts alone cannot tell."""
    channels: dict[tuple[str, str], Counter] = {}
    folders: Counter = Counter()
    for c in chunks:
        source, _, locator = c.source_id.partition(":")
        if c.kind == "slack":
            name = locator.rpartition("/")[0] or locator  # "<channel name>/<thread ts>"
            found = _CHANNEL_IN_URL.search(c.url)
            key = next((g for g in found.groups() if g), "") if found else ""
            channels.setdefault((source, key or f"#{name}"), Counter())[name] += 1
        elif "/" in locator:
            folders[(source, locator.split("/", 1)[0])] += 1
    out: dict[str, dict[str, dict]] = {"channels": {}, "folders": {}}
    for (source, key), names in sorted(channels.items()):
        out["channels"].setdefault(source, {})[key] = {"name": names.most_common(1)[0][0],
                                                      "chunks": sum(names.values())}
    for (source, folder), n in sorted(folders.items()):
        out["folders"].setdefault(source, {})[folder] = n
    return out


class SupersededError(ArtifactError):
    """LATEST names a version made from newer sources: another ingest published meanwhile."""


class ShrunkError(ArtifactError):
    """The version lost a source or much of the index against LATEST: likely a broken source."""


DEFAULT_MAX_SHRINK = 0.25
_SHRINK_MIN_CHUNKS = 50  # a source smaller than this is judged only on giving nothing at all
# A Slack channel or a top-level folder with at least this many chunks that now gives none is a loss
# (`part_counts`): below _SHRINK_MIN_CHUNKS, as a channel of a few dozen threads matters, and it is
# all or nothing, so threads deleted one by one or a folder trimmed never trip it.
_PART_MIN_CHUNKS = 20


def publish(store: str, version: str, *, keep_versions: int = DEFAULT_KEEP_VERSIONS, force: bool = False,
            sources_read_at: datetime | None = None, max_shrink: float = DEFAULT_MAX_SHRINK) -> None:
    """Point LATEST at `version` after opening and verifying it, then prune old versions.

    A bad version leaves LATEST alone. Two ingests into one store are serialised by a lock
    file (ingest.store.store_lock), and inside it LATEST only moves forward: a version made
    of sources read before those of the version LATEST names is refused (`force` overrides,
    for a deliberate rollback). `sources_read_at`: when this run read its sources, for a
    caller that publishes a version built earlier from the same content (a Flyte task-cache
    hit); the version's manifest says otherwise. Retention (`prune`) runs after the move; its
    failures are logged, never fatal to the publish. When LATEST already named `version`, it is
    written again (a bot that refused it retries it when LATEST changes) but nothing is pruned:
    nothing changed, and with `keep_versions = 1` a prune would delete the version LATEST named
    before, a rollback's target. A version that lost more than `max_shrink` of LATEST's chunks, or
    every chunk of a source, of one of its Slack channels or of one of its top-level folders, is
    refused too (`_refuse_shrunk`): a source that broke quietly (an include pattern that stopped
    matching, a renamed channel) must not replace a good index.
    """
    check_version_id(version, f"publish {store}")
    new_manifest = open_version(store, version).manifest
    if sources_read_at is not None:
        new_manifest = {**new_manifest, "sources_read_at": sources_read_at.astimezone(timezone.utc).isoformat()}
    fs, root = get_fs(store)
    with store_lock(fs, join(root, PUBLISH_LOCK)):
        previous = _current_latest(store)
        if previous not in (None, version) and not force:
            _refuse_older(store, previous, version, new_manifest)
            _refuse_shrunk(store, previous, version, new_manifest, max_shrink)
        atomic_write(fs, join(root, LATEST), (version + "\n").encode())
    if previous == version:
        log.info("LATEST already named %s in %s: written again, nothing pruned", version, store)
        return
    log.info("published index version %s in %s", version, store)
    try:
        prune(store, keep_versions, protect={previous} if previous else set())
    except Exception as e:  # noqa: BLE001 - a store that refuses deletes grows; the new version still serves
        log.warning("pruning old index versions in %s failed: %s", store, e)


# <store>/last-run.json: when an ingest last finished a publish, changed or not. An unchanged night
# writes no new version, so LATEST alone cannot tell a quiet week from a week of failed runs (the
# bot's flytegpt_store_last_run_timestamp_seconds reads it). {"finished_at": ISO time, "version":
# the version LATEST names, "sources_read_at": ISO time or "", "changed": this run moved LATEST}.
LAST_RUN = "last-run.json"


def record_last_run(store: str, version: str, sources_read_at: str, *, changed: bool) -> None:
    """Write LAST_RUN after a successful publish (or a run superseded by a newer one)."""
    fs, root = get_fs(store)
    record = {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "version": version,
              "sources_read_at": sources_read_at, "changed": changed}
    atomic_write(fs, join(root, LAST_RUN), (json.dumps(record, indent=1) + "\n").encode())


def last_run_time(store: str) -> datetime | None:
    """When the last ingest finished (LAST_RUN's finished_at); None when none is recorded (a store
    written before it existed) or the file is damaged. A failed read (a store hiccup) raises: the
    caller keeps what it knew, rather than report "never" and page someone."""
    fs, root = get_fs(store)
    raw = read_bytes(fs, join(root, LAST_RUN))
    try:
        stamp = datetime.fromisoformat(str(json.loads(raw or b"null")["finished_at"]))
    except (ValueError, TypeError, KeyError):
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def latest_or_none(store: str) -> str | None:
    """The version LATEST names; None when nothing is published or LATEST cannot be read."""
    try:
        return read_latest(store)
    except ArtifactError:
        return None


def _current_latest(store: str) -> str | None:
    """LATEST as it stands; an unreadable LATEST counts as none (publishing repairs it)."""
    try:
        return read_latest(store)
    except ArtifactError as e:
        log.warning("replacing an unreadable %s: %s", LATEST, e)
        return None


def content_time(manifest: dict[str, Any]) -> datetime | None:
    """When a version's sources were read (its build time for a version older than that field)."""
    stamp = manifest.get("sources_read_at") or manifest.get("created_at")
    try:
        parsed = datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _refuse_older(store: str, current: str, version: str, new_manifest: dict[str, Any]) -> None:
    """Raise when `version` was made from older sources than the version LATEST names."""
    try:
        current_manifest = read_manifest(store, current)
    except ArtifactError:
        return  # LATEST names a version that is gone or broken: anything verified is better
    now_time, new_time = content_time(current_manifest), content_time(new_manifest)
    if now_time is not None and new_time is not None and new_time < now_time:
        raise SupersededError(
            f"not published: {LATEST} in {store} names {current}, made from sources read at "
            f"{now_time.isoformat()}, newer than {version} ({new_time.isoformat()}); another ingest "
            f"published meanwhile. {version} stays in the store unpublished."
        )


def _refuse_shrunk(store: str, current: str, version: str, new_manifest: dict[str, Any], max_shrink: float) -> None:
    """Raise when `version` holds much less than LATEST's version of the sources both were built
    from. A source left out of the config is no loss; one still configured that gave nothing is,
    and so is a Slack channel or a top-level folder of one that had _PART_MIN_CHUNKS and gave none
    (`_part_losses`)."""
    if max_shrink >= 1:
        return
    try:
        old_manifest = read_manifest(store, current)
    except ArtifactError:
        return
    before = old_manifest.get("counts")
    after = new_manifest.get("counts") or {}
    if not isinstance(before, dict) or not isinstance(after, dict):
        return
    common = [name for name in before if name in source_names(new_manifest)]
    had = {name: _count(before[name]) for name in common}
    has = {name: _count(after.get(name)) for name in common}
    losses = [f"{name} gave no chunks (it had {had[name]:,})" for name in common if had[name] and not has[name]]
    losses += [f"{name} has {has[name]:,} chunks (it had {had[name]:,})" for name in common
               if has[name] and had[name] >= _SHRINK_MIN_CHUNKS and has[name] < (1 - max_shrink) * had[name]]
    losses += _part_losses(old_manifest, new_manifest, [name for name in common if has[name]], had, has)
    total_before, total_after = sum(had.values()), sum(has.values())
    if total_after < (1 - max_shrink) * total_before:
        losses.append(f"the index has {total_after:,} chunks of these sources (it had {total_before:,})")
    if losses:
        raise ShrunkError(
            f"not published: against {current}, which {LATEST} in {store} names, {'; '.join(losses)}. "
            f"A source that broke (a path, an include pattern, a renamed channel) would replace a good "
            f"index. Check the ingest's summary; if the loss is meant (a source, channel or folder taken "
            f"out on purpose), `flytegpt publish {version}` publishes it, or set [index] max_shrink "
            f"(now {max_shrink:g}; 1 turns this off).")


def _part_losses(old: dict[str, Any], new: dict[str, Any], sources: list[str], had: dict[str, int],
                 has: dict[str, int]) -> list[str]:
    """The channels and top-level folders (`part_counts`) of `sources` that had _PART_MIN_CHUNKS
    chunks in `old` and have none in `new`. A channel id never moves, so a channel gone is a loss; a folder's files
    can (an upstream restructure, `docs/` to `site/docs/`), so a folder gone counts only when its
    source shrank by at least half of what the folder held: its chunks did not turn up elsewhere.
    A channel that the new version's config no longer names (`configured_channels`) was taken out
    on purpose: no loss. Where the config names no channels (every channel the bot is in) or the
    manifest predates that record, a channel taken out is refused like a renamed one: `flytegpt
    publish V` once. Either manifest written before these counts (no `channels`/`folders`):
    nothing is compared."""
    losses: list[str] = []
    if not all(isinstance(new.get(field_name), dict) for field_name in ("channels", "folders")):
        return losses  # a version written before these counts (`flytegpt publish` of an old one)
    for name in sources:
        before, after = _part(old, "channels", name), _part(new, "channels", name)
        named = _configured(new, name)
        for key, entry in sorted(before.items()):
            n = _count(entry.get("chunks")) if isinstance(entry, dict) else 0
            label = str((entry.get("name") if isinstance(entry, dict) else None) or key).lstrip("#")
            now = after.get(key)
            if named is not None and not {key.lstrip("#").casefold(), label.casefold()} & named:
                continue  # the config stopped naming it
            if n >= _PART_MIN_CHUNKS and not (isinstance(now, dict) and _count(now.get("chunks"))):
                shown = f"#{label}" if key.startswith("#") else f"#{label} ({key})"
                losses.append(f"{name}: channel {shown} gave no chunks (it had {n:,}; renamed, archived, "
                              f"or the bot removed from it)")
        before, after = _part(old, "folders", name), _part(new, "folders", name)
        for folder, value in sorted(before.items()):
            n = _count(value)
            if n >= _PART_MIN_CHUNKS and not _count(after.get(folder)) and had[name] - has[name] >= n / 2:
                losses.append(f"{name}: folder {folder}/ gave no chunks (it had {n:,})")
    return losses


def _configured(manifest: dict[str, Any], source: str) -> set[str] | None:
    """The channels (ids and names, casefolded, without '#') the manifest's config named for
    `source`; None when it named none (every channel) or the manifest does not say."""
    named = manifest.get("configured_channels")
    entry = named.get(source) if isinstance(named, dict) else None
    if not isinstance(entry, list) or not entry:
        return None
    return {str(c).strip().lstrip("#").casefold() for c in entry}


def _part(manifest: dict[str, Any], field_name: str, source: str) -> dict[str, Any]:
    """One source's `part_counts` entry in a manifest; {} when it has none or it is not an object."""
    parts = manifest.get(field_name)
    entry = parts.get(source) if isinstance(parts, dict) else None
    return entry if isinstance(entry, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# ---------------------------------------------------------------- reading


def check_version_id(version: str, where: str) -> str:
    """`version` if it is a version id (`<UTC time>-<8 hex>`), else an ArtifactError.

    Version ids come from LATEST, manifests, listings and callers; they are joined to store
    paths, so anything else (`../x`, an absolute path, a NUL byte) is refused first.
    """
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ArtifactError(f"{where}: {version!r} is not an index version id (YYYYMMDDTHHMMSSZ-xxxxxxxx)")
    return version


def read_latest(store: str) -> str | None:
    """The published version id, or None when nothing has been published yet.

    A LATEST that is not a version id (a NUL byte, a path, garbage) is an ArtifactError.
    """
    fs, root = get_fs(store)
    fs.invalidate_cache(root)
    data = read_bytes(fs, join(root, LATEST))
    if data is None:
        return None
    where = f"{LATEST} in {store}"
    if b"\0" in data:
        raise ArtifactError(f"{where} contains NUL bytes, not a version id: publish a version again to repair it")
    try:
        version = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ArtifactError(f"{where} is not UTF-8 text, not a version id: publish a version again to repair it") from None
    if not version:
        return None
    return check_version_id(version, where)


def unpublished_reason(store: str) -> str:
    """Why `read_latest` found nothing published: no LATEST at all, or one that is empty (a
    hand edit, a copy that failed). Told apart because "not found" sends the reader looking
    for a file that is there."""
    fs, root = get_fs(store)
    data = read_bytes(fs, join(root, LATEST))
    return f"{LATEST} not found" if data is None else f"{LATEST} is empty"


def list_versions(store: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first."""
    fs, root = get_fs(store)
    fs.invalidate_cache()  # object stores: a cached listing of a version folder may predate its manifest
    names = sorted(
        os.path.basename(e["name"].rstrip("/"))
        for e in list_dir(fs, root)
        if e.get("type") == "directory"
    )
    complete = [n for n in names if _VERSION_RE.match(n) and fs.exists(join(root, n, MANIFEST))]
    return _creation_order(store, complete)


def _creation_order(store: str, versions: list[str]) -> list[str]:
    """Versions (sorted by id) in the order they were made: an id names its second, then a
    content hash, so versions of one second are ordered by their manifests' `created_at`."""
    per_second = Counter(v[:16] for v in versions)

    def made(version: str) -> tuple[str, str]:
        if per_second[version[:16]] == 1:
            return version[:16], ""
        try:
            return version[:16], str(read_manifest(store, version).get("created_at", ""))
        except ArtifactError:
            return version[:16], ""

    return sorted(versions, key=made)  # stable: ties stay in id order


def prune(store: str, keep: int = DEFAULT_KEEP_VERSIONS, *, protect: set[str] = frozenset()) -> list[str]:
    """Delete versions beyond the newest `keep`, oldest first; returns the deleted ids.

    Never deleted: the version LATEST names, those in `protect` (publish passes the
    version LATEST named before it, which running bots may still serve until their next
    poll), and those made from sources read after LATEST's: another ingest may have written
    one and not published it yet (its build outran ours), and publish would take it. Then
    `WORK_DIR` files older than the oldest version kept are deleted too: the Flyte
    intermediates of versions that are gone.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    fs, root = get_fs(store)
    versions = list_versions(store)
    keep_set = set(versions[-keep:]) | set(protect)
    latest = latest_or_none(store)
    if latest:
        keep_set.add(latest)
    latest_time = _version_time(store, latest)
    removed = []
    for version in versions:
        if version in keep_set or latest_or_none(store) == version:  # published meanwhile: keep it
            continue
        if _newer_than(_version_time(store, version), latest_time):
            log.info("kept index version %s in %s: made from newer sources than %s, it may still be "
                     "published", version, store, LATEST)
            continue
        fs.rm(join(root, version), recursive=True)
        removed.append(version)
        log.info("pruned index version %s from %s", version, store)
    kept = [v for v in versions if v not in removed]
    if kept:
        try:
            oldest = content_time(read_manifest(store, kept[0]))
        except ArtifactError:
            oldest = None
        if oldest is not None:
            prune_work_files(store, before=oldest)
    _prune_unfinished(fs, root, store)
    if removed:
        _prune_models(store, kept)
    return removed


UNFINISHED_AFTER = timedelta(days=2)  # far longer than any build runs (the Flyte build task's timeout)


def _prune_unfinished(fs, root: str, store: str, now: datetime | None = None) -> list[str]:
    """Delete version folders that never got their manifest and are older than UNFINISHED_AFTER.

    The manifest is written last, so a build killed before it (an OOM-killed pod) leaves a folder
    no listing shows and no prune deleted: on S3, a whole index of objects every time. The
    version id holds the time it was made, which every store keeps the same."""
    now = now or datetime.now(timezone.utc)
    removed = []
    for entry in list_dir(fs, root):
        name = os.path.basename(entry["name"].rstrip("/"))
        if entry.get("type") != "directory" or not _VERSION_RE.fullmatch(name):
            continue
        made = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        if now - made < UNFINISHED_AFTER or fs.exists(join(root, name, MANIFEST)):
            continue
        fs.rm(join(root, name), recursive=True)
        removed.append(name)
        log.info("removed %s from %s: a build that never finished (no %s)", name, store, MANIFEST)
    return removed


def _version_time(store: str, version: str | None) -> datetime | None:
    """When `version`'s sources were read; None when there is no such version or it is unreadable."""
    if version is None:
        return None
    try:
        return content_time(read_manifest(store, version))
    except ArtifactError:
        return None


def _newer_than(made: datetime | None, than: datetime | None) -> bool:
    return made is not None and than is not None and made > than


def _prune_models(store: str, kept: list[str]) -> None:
    """Tuned models (ingest/tuning.py) that no kept version was embedded with go with the versions."""
    from flytegpt.ingest.tuning import prune_models

    names = set()
    for version in kept:
        try:
            names.add(str(read_manifest(store, version)["model"]["model_id"]))
        except (ArtifactError, KeyError, TypeError):
            return  # a manifest that can't be read: keep every model rather than guess
    from flytegpt.ingest.embedding_cache import remove_model

    for model_id in prune_models(store, names):
        vectors = remove_model(store, model_id)  # a new tuned model is a new cache: the old one is never read
        log.info("pruned tuned model %s%s from %s", model_id, " and its cached vectors" if vectors else "", store)


def prune_cache(cache_dir: str, keep: set[str]) -> list[str]:
    """Delete the local copies of versions (`open_version`'s `cache_dir/<version>/`) not in `keep`.

    A bot on a remote store downloads each version it serves into its cache folder; without
    this a nightly ingest fills the bot's volume. Only version-named folders are touched.
    """
    try:
        entries = list(os.scandir(cache_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _VERSION_RE.fullmatch(entry.name) and entry.name not in keep:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("removed %d cached index versions from %s", len(removed), cache_dir)
    return sorted(removed)


def prune_work_files(store: str, *, before: datetime) -> list[str]:
    """Delete files under `<store>/flyte-work/` last modified before `before`; returns their paths.

    The Flyte tasks (flyte/handoff.py) pass content-addressed intermediates through this
    folder; once the versions they were made for are pruned, nothing reads them (a cached
    task whose file is gone says so and is re-run with the cache overwritten; a run that reads a
    file marks it in use again, flyte/handoff.read_work_file).
    """
    fs, root = get_fs(store)
    folder = join(root, WORK_DIR)
    fs.invalidate_cache(folder)
    try:
        entries = fs.find(folder, detail=True)
    except FileNotFoundError:
        return []
    removed = []
    for path, info in sorted(entries.items()):
        modified = modified_time(fs, path, info)
        if modified is not None and modified < before:
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                continue  # removed by a concurrent prune
            removed.append(path)
    if removed:
        log.info("pruned %d intermediate files from %s", len(removed), folder)
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
    except ValueError as e:
        raise ArtifactError(f"version {version}: {MANIFEST} is not a valid manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"version {version}: {MANIFEST} is not a valid manifest (not a JSON object)")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION or isinstance(found, bool):
        newer = isinstance(found, int) and not isinstance(found, bool) and found > FORMAT_VERSION
        raise ArtifactError(
            f"version {version}: {MANIFEST} format_version: expected {FORMAT_VERSION}, found {found!r}"
            + (" (written by a newer FlyteGPT: upgrade this one)" if newer else "")
        )
    if manifest.get("version") != version:
        raise ArtifactError(f"version {version}: {MANIFEST} version: expected {version}, found {manifest.get('version')}")
    _check_manifest_fields(manifest, f"version {version}: {MANIFEST}")
    return manifest


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_manifest_fields(manifest: dict[str, Any], where: str) -> None:
    """Every field a reader uses has its type, and every file name stays inside the version.

    File names are joined to the version folder (and, for a remote store, to a local cache
    folder), so only the version's own layout is accepted: `<name>` or `keyword/<name>`,
    no `..`, no absolute path, no other separators.
    """
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("model_id"), str) or not model["model_id"]:
        raise ArtifactError(f"{where} model.model_id: expected a model id, found {model!r:.200}")
    if not _is_int(model.get("dimension"), 1):
        raise ArtifactError(f"{where} model.dimension: expected a positive integer, found {model.get('dimension')!r:.100}")
    if not _is_int(manifest.get("chunk_count"), 0):
        raise ArtifactError(f"{where} chunk_count: expected an integer >= 0, found {manifest.get('chunk_count')!r:.100}")
    index = manifest.get("index")
    if not isinstance(index, dict) or index.get("type") not in INDEX_TYPES:
        found = index.get("type") if isinstance(index, dict) else index
        raise ArtifactError(f"{where} index.type: expected one of {', '.join(INDEX_TYPES)}, found {found!r:.100}")
    if "nprobe" in index and not _is_int(index["nprobe"], 1):
        raise ArtifactError(f"{where} index.nprobe: expected a positive integer, found {index['nprobe']!r:.100}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{where} files: expected an object of file entries, found {type(files).__name__}")
    for name, entry in files.items():
        _check_file_name(name, where)
        if not isinstance(entry, dict) or not _is_int(entry.get("bytes"), 0) \
                or not isinstance(entry.get("sha256"), str) or not _SHA256_RE.fullmatch(entry["sha256"]):
            raise ArtifactError(f"{where} files[{name!r}]: expected {{\"sha256\": 64 hex digits, \"bytes\": an integer}}")


def _check_file_name(name: Any, where: str) -> None:
    parts = name.split("/") if isinstance(name, str) else []
    ok = (len(parts) == 1 and _FILE_NAME_RE.fullmatch(parts[0]) is not None) or (
        len(parts) == 2 and parts[0] == KEYWORD_DIR and _FILE_NAME_RE.fullmatch(parts[1]) is not None
    )
    if not ok:
        raise ArtifactError(f"{where} files: {name!r:.200} is not a file name of an index version")


def read_manifest(store: str, version: str) -> dict[str, Any]:
    """A version's manifest alone (counts, model, created_at), checked but without its files:
    for listing the versions of a store, not for serving one."""
    check_version_id(version, store)
    fs, root = get_fs(store)
    return _read_manifest(fs, join(root, version), version, store)


def source_names(manifest: dict[str, Any]) -> set[str]:
    """The names of the sources a version was built from, as its manifest lists them: those that
    gave chunks (`counts`) and those read without giving any (`stats.sources`)."""
    names: set[str] = set()
    stats = manifest.get("stats")
    for listing in (manifest.get("counts"), stats.get("sources") if isinstance(stats, dict) else None):
        if isinstance(listing, dict):
            names.update(str(name) for name in listing)
    return names


def file_problems(store: str, version: str, manifest: dict[str, Any]) -> list[str]:
    """What one listing of a version's folder shows wrong with the files its manifest lists:
    missing, or not the size recorded (a truncated upload, a disk that filled up). No hashing:
    for listing versions (`flytegpt versions`); serving or publishing one verifies every byte."""
    fs, root = get_fs(store)
    folder = join(root, version)
    try:
        found = fs.find(folder, detail=True)
    except (OSError, ValueError) as e:
        return [f"cannot list its files: {e}"]
    sizes = {path[len(folder):].lstrip("/"): info.get("size") for path, info in found.items()}
    problems = []
    for name, entry in sorted((manifest.get("files") or {}).items()):
        size = sizes.get(name)
        if size is None:
            problems.append(f"{name} is missing")
        elif isinstance(entry, dict) and entry.get("bytes") is not None and size != entry["bytes"]:
            problems.append(f"{name} has {size:,} bytes, its manifest says {entry['bytes']:,}")
    return problems


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


def _check_index_type(dense, kind: str, version: str) -> None:
    """The FAISS file must hold the index type the manifest records (search settings depend on it)."""
    import faiss

    expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVF}[kind]
    if not isinstance(dense, expected):
        raise ArtifactError(
            f"version {version}: {DENSE_FILE} holds a {type(dense).__name__}, the manifest says index type {kind!r}"
        )


def _apply_search_params(dense, info: dict) -> None:
    """Search settings recorded in the manifest (FAISS does not keep all of them in the file)."""
    import faiss

    if info.get("type") == "ivf":
        ivf = faiss.extract_index_ivf(dense)
        ivf.nprobe = info.get("nprobe", IVF_NPROBE)
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
            raise ArtifactError(f"no published index in {store}: {unpublished_reason(store)} "
                                "(run `flytegpt ingest` first, or `flytegpt publish VERSION`)")
    check_version_id(version, store)
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
        if manifest["index"]["type"] == "flat":
            _check_flat_file(os.path.join(base, DENSE_FILE), count, dimension, version)
        try:
            dense = faiss.read_index(os.path.join(base, DENSE_FILE))
        except RuntimeError as e:
            raise ArtifactError(f"version {version}: {DENSE_FILE} is not a FAISS index ({e})") from None
        _check_index_type(dense, manifest["index"]["type"], version)
        if dense.d != dimension:
            raise ArtifactError(f"version {version}: {DENSE_FILE} dimension: expected {dimension} (manifest), found {dense.d}")
        if dense.ntotal != count:
            raise ArtifactError(f"version {version}: {DENSE_FILE} ntotal: expected {count} (chunk_count), found {dense.ntotal}")
        chunks = _load_chunks(os.path.join(base, CHUNKS_FILE), version)
        if len(chunks) != count:
            raise ArtifactError(f"version {version}: {CHUNKS_FILE} rows: expected {count} (chunk_count), found {len(chunks)}")
        if MESSAGE_URLS_FILE in entries:
            chunks = _with_message_urls(chunks, os.path.join(base, MESSAGE_URLS_FILE), version)
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


__all__ = [
    "ArtifactError", "ModelInfo", "IndexVersion", "write_version", "publish",
    "read_latest", "latest_or_none", "source_names",
    "list_versions", "open_version", "read_manifest", "prune", "FORMAT_VERSION", "check_version_id",
    "choose_index_type", "gpu_count", "ivf_nlist", "build_dense_index",
]
