"""Domain tuning: the embedding model fine-tuned on pairs the corpus gives for free.

A small general model does not know that "how do I run a bash script" is what a page titled
"Shell tasks" answers. The corpus teaches it without labels: a docs section's heading path
goes with its text, a Slack thread's question with its answers, a function's docstring with
its code. One epoch of in-batch-negative training (sentence-transformers'
MultipleNegativesRankingLoss) on those pairs lifts dense and hybrid retrieval on both dev
question sets (tests/bench/RESULTS.md, "Retrieval").

- Held out: a tenth of the pairs (chosen by a hash of the pair, so stable from run to run) is
  never trained on; their MRR before and after is in the report, and a tuned model that ranks
  them worse than its base is refused (the ingest keeps the base model).
- Model id: `flytegpt-tuned/<base>-<sha12>`, the hash over the base model, the recipe and its
  settings and the pairs. A new id has its own embedding cache.
- Stored in the index store, `<store>/models/<slug>/`, with `tune.json` written last (a folder
  without it is incomplete and ignored): every reader of the store (the bot's pods) can load
  the query model an index was built with, `local_model()` copies it once into the cache.
- Reused: a stored model of the same base and settings trained on pairs that cover at least
  `[tuning] reuse_overlap` of today's pairs is used again, so a nightly ingest with a few new
  threads keeps its model and with it every cached vector.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable, Sequence

from flytegpt.ingest.chunking import is_evidence
from flytegpt.ingest.config import Config, TuningConfig
from flytegpt.ingest.models import Chunk, code_words
from flytegpt.ingest.store import atomic_write, get_fs, is_local, join, list_dir, read_bytes

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

TUNED_PREFIX = "flytegpt-tuned/"
RECIPE_VERSION = 1  # bump when the pairs or the training change: the model changes with them
REPORT_FILE = "tune.json"  # written last: its presence marks a complete model folder
PAIRS_FILE = "pairs.txt"  # one key per training pair, for the reuse check
MODELS_DIR = "models"

_DOCSTRING = re.compile(r'"""\s*(.+?)(?:\n\s*\n|""")', re.S)
# leading Markdown headings ("# Title") and reStructuredText ones (a line over ===, ---, ~~~)
_HEADING_LINES = re.compile(r"\A(?:\s*(?:#{1,6}[ \t][^\n]*|[^\n]+\n[=\-~^\"'`*+]{3,})[ \t]*(?:\n|\Z))+")
_SPEAKER = re.compile(r"^user\d+:\s*|^[^:\n]{1,40}:\s+")


class TuningError(RuntimeError):
    """A tuned model that cannot be made or found, with what to do about it."""


class TooFewPairs(TuningError):
    """The corpus is too small to tune on."""


@dataclass(frozen=True)
class Pair:
    anchor: str  # stands in for a question
    positive: str  # the text that answers it
    kind: str  # docs, slack, code

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.anchor}\0{self.positive}".encode()).hexdigest()[:16]


@dataclass
class TuneReport:
    """What `ensure_tuned` did: the model to embed with and how it was judged."""

    model_id: str
    base_model: str
    path: str = ""  # local folder of the model ("" when refused)
    reused: bool = False  # an earlier tuned model in the store was good enough
    refused: bool = False  # the tuned model ranked the held-out pairs worse: the base is used
    pairs: dict[str, int] = field(default_factory=dict)  # per kind, trained on
    held_out: int = 0
    held_out_mrr_base: float | None = None
    held_out_mrr_tuned: float | None = None
    seconds: float = 0.0
    device: str = ""
    precision: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TuneReport":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        if self.refused:
            return (f"tuning refused: held-out MRR {self.held_out_mrr_tuned:.3f} < base {self.held_out_mrr_base:.3f}; "
                    f"embedding with {self.base_model}")
        how = "reused" if self.reused else f"trained in {self.seconds:.0f}s on {self.device} {self.precision}"
        figures = ""
        if self.held_out_mrr_base is not None and self.held_out_mrr_tuned is not None:
            figures = f", held-out MRR {self.held_out_mrr_base:.3f} -> {self.held_out_mrr_tuned:.3f}"
        return f"{self.model_id} ({how}, {sum(self.pairs.values())} pairs{figures})"


# ------------------------------------------------------------------ pairs


def training_pairs(chunks: Iterable[Chunk]) -> list[Pair]:
    """The (question-like, answer) pairs a corpus gives without labels, in chunk order."""
    pairs: list[Pair] = []
    for chunk in chunks:
        pair = _pair(chunk)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _pair(chunk: Chunk) -> Pair | None:
    text = chunk.text.strip()
    if chunk.kind == "docs":
        # the heading path stands for "how do I <what this section is about>"
        text = _HEADING_LINES.sub("", text).strip()  # the heading would give the answer away
        if is_evidence(chunk) or len(text) < 80 or not chunk.title.strip():
            return None
        return Pair(chunk.title.strip(), text, "docs")
    if chunk.kind == "slack":
        question, _, answers = text.partition("\n\n")
        question = _SPEAKER.sub("", question.strip(), count=1)
        if len(question) < 15 or len(answers.strip()) < 40:
            return None
        return Pair(question, answers.strip(), "slack")
    if chunk.kind == "code":
        match = _DOCSTRING.search(text)
        if match is None:
            return None
        doc = " ".join(match.group(1).split())[:300]
        code = (text[: match.start()] + text[match.end():]).strip()
        if len(doc) < 30 or len(code) < 40:
            return None
        return Pair(doc, code_words(code), "code")  # code as the index embeds it (Chunk.dense_text)
    return None


def sample_pairs(pairs: Sequence[Pair], max_pairs: int) -> list[Pair]:
    """At most `max_pairs` (0: all): those with the smallest keys, a sample that stays the same as
    the corpus grows, so a stored model's pairs still cover tomorrow's sample (the reuse check)."""
    if not max_pairs or len(pairs) <= max_pairs:
        return list(pairs)
    keep = {p.key for p in sorted(pairs, key=lambda p: p.key)[:max_pairs]}
    return [p for p in pairs if p.key in keep]


def split_held_out(pairs: Sequence[Pair], share: float) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): a pair is held out by its key's hash, the same pair in every run."""
    if share <= 0:
        return list(pairs), []
    cut = int(share * 10_000)
    train, held = [], []
    for p in pairs:
        (held if int(p.key[:8], 16) % 10_000 < cut else train).append(p)
    return train, held


def tuned_model_id(base_model: str, cfg: TuningConfig, pairs: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"base": base_model, "recipe": RECIPE_VERSION, "settings": _settings(cfg)},
                        sort_keys=True).encode())
    for p in pairs:
        h.update(p.key.encode())
    short = base_model.rstrip("/").rsplit("/", 1)[-1]
    return f"{TUNED_PREFIX}{short}-{h.hexdigest()[:12]}"


def is_tuned(model_id: str) -> bool:
    return model_id.startswith(TUNED_PREFIX)


def _settings(cfg: TuningConfig) -> dict:
    """The settings that change the model (not when or whether to tune)."""
    return cfg.model_dump(include={"epochs", "batch_size", "learning_rate", "max_seq_length", "held_out",
                                   "max_pairs", "seed"})


_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _slug(model_id: str) -> str:
    """The tuned model's folder name. It comes from a manifest in the store, and is joined to the
    store's and the cache's paths: a name like "../../elsewhere" is refused."""
    slug = model_id.removeprefix(TUNED_PREFIX)
    if not _SLUG.fullmatch(slug) or ".." in slug:
        raise TuningError(f"{model_id!r} is not a tuned model id ({TUNED_PREFIX}<name>, letters, digits, . _ -)")
    return slug


def _safe_relative(rel: str, model_id: str) -> PurePosixPath:
    """A file of a model folder in the store as a path under the local copy: every object key is
    the store's to choose, and "a/../../x" or "/x" would write outside it."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")):
        raise TuningError(f"tuned model {model_id}: the store holds a file named {rel!r}; refused")
    return path


# ------------------------------------------------------------------ training


def mrr(model: "SentenceTransformer", pairs: Sequence[Pair], batch_size: int = 32, at: int = 10) -> float:
    """MRR@`at` of each anchor's own positive among all the pairs' positives."""
    import numpy as np

    if not pairs:
        return 0.0
    anchors = model.encode([p.anchor for p in pairs], batch_size=batch_size, normalize_embeddings=True,
                           show_progress_bar=False)
    positives = model.encode([p.positive for p in pairs], batch_size=batch_size, normalize_embeddings=True,
                             show_progress_bar=False)
    scores = np.asarray(anchors) @ np.asarray(positives).T
    own = scores[np.arange(len(pairs)), np.arange(len(pairs))]
    ranks = (scores > own[:, None]).sum(axis=1) + 1
    return float(np.mean(np.where(ranks <= at, 1.0 / ranks, 0.0)))


def train(model: "SentenceTransformer", pairs: Sequence[Pair], cfg: TuningConfig, *, device: str,
          progress: bool = True) -> str:
    """Fine-tune `model` in place on `pairs`; returns the precision it trained in.

    On a CPU the first steps are timed in fp32 and in bf16 autocast (per token) and the faster
    one trains the rest: which is faster depends on the CPU, not on its flags. CUDA: fp32.
    """
    import torch
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(cfg.seed)
    order = list(pairs)
    random.Random(cfg.seed).shuffle(order)
    bs = min(cfg.batch_size, len(order))
    steps = max(1, math.ceil(len(order) / bs * cfg.epochs))
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    warmup = max(1, int(0.1 * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps))
    window = model.max_seq_length
    model.max_seq_length = cfg.max_seq_length
    cuda = device.startswith("cuda")
    # a GPU trains MiniLM on a corpus's pairs in seconds in fp32: no loss scaling to get wrong
    precision = "fp32" if cuda else cfg.precision if cfg.precision != "auto" else "fp32"
    trial = {"fp32": [], "bf16": []}  # CPU "auto": (seconds, tokens) of the timed steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="tuning", unit="step")
    model.train()
    try:
        for step in range(steps):
            start = (step * bs) % len(order)
            batch = order[start:start + bs]
            if not cuda and cfg.precision == "auto" and 1 <= step <= 4:
                precision = "fp32" if step <= 2 else "bf16"
            features = [_features(model, [p.anchor for p in batch], device),
                        _features(model, [p.positive for p in batch], device)]
            t = time.perf_counter()
            dtype = {"bf16": torch.bfloat16}.get(precision)
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(features, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if precision in trial and not cuda and cfg.precision == "auto" and 1 <= step <= 4:
                tokens = sum(int(f["attention_mask"].sum()) for f in features)
                trial[precision].append((time.perf_counter() - t, tokens))
                if step == 4:
                    precision = _faster(trial)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        model.max_seq_length = window
        model.eval()
    return precision


def _faster(trial: dict[str, list[tuple[float, int]]]) -> str:
    """The precision with more tokens per second in the timed steps; fp32 unless bf16 is clearly faster."""
    rate = {p: sum(n for _, n in ts) / max(sum(s for s, _ in ts), 1e-9) for p, ts in trial.items() if ts}
    choice = "bf16" if rate.get("bf16", 0.0) > 1.10 * rate.get("fp32", float("inf")) else "fp32"
    log.info("tuning: %s (tokens/s %s)", choice, {p: round(r) for p, r in rate.items()})
    return choice


def _features(model: "SentenceTransformer", texts: list[str], device: str) -> dict:
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in tokenize(texts).items()}


# ------------------------------------------------------------------ the store


def _models_root(store: str) -> tuple:
    fs, root = get_fs(store)
    return fs, join(root, MODELS_DIR)


def stored_models(store: str) -> list[dict]:
    """The complete tuned models in the store: each one's tune.json."""
    fs, root = _models_root(store)
    out = []
    for entry in list_dir(fs, root):
        if entry.get("type") != "directory":
            continue
        raw = read_bytes(fs, join(entry["name"], REPORT_FILE))
        if raw is None:
            continue  # being written, or a crashed upload
        try:
            info = json.loads(raw)
        except ValueError:
            log.warning("tuned model %s: unreadable %s; ignored", entry["name"], REPORT_FILE)
            continue
        if not _names_its_folder(info, entry["name"]):
            log.warning("tuned model %s: its %s names another folder; ignored", entry["name"], REPORT_FILE)
            continue
        out.append(info)
    return out


def _names_its_folder(info: object, folder: str) -> bool:
    """A tune.json is used (reused, pruned by its model id) only when its id is the folder it is
    in: prune deletes the folder an id names, and the id is the store's to write."""
    try:
        return isinstance(info, dict) and _slug(str(info.get("model_id", ""))) == folder.rstrip("/").rsplit("/", 1)[-1]
    except TuningError:
        return False


def _reusable(store: str, base_model: str, cfg: TuningConfig, keys: set[str]) -> dict | None:
    """The stored model of this base and these settings whose pairs cover the most of `keys`."""
    fs, root = _models_root(store)
    best, best_cover = None, 0.0
    for info in stored_models(store):
        if info.get("base_model") != base_model or info.get("settings") != _settings(cfg) \
                or info.get("recipe") != RECIPE_VERSION or info.get("refused"):
            continue
        raw = read_bytes(fs, join(root, _slug(info["model_id"]), PAIRS_FILE))
        if raw is None or not keys:
            continue
        cover = len(keys & set(raw.decode().split())) / len(keys)
        if cover > best_cover:
            best, best_cover = info, cover
    if best is not None and best_cover >= cfg.reuse_overlap:
        log.info("tuning: reusing %s (its pairs cover %.0f%% of today's)", best["model_id"], 100 * best_cover)
        return best
    return None


def _cache_root(cache_dir: str | None) -> Path:
    """Where the local copies of a remote store's tuned models are: `<cache_dir>/models/`, or
    ~/.cache/flytegpt/models beside the ONNX exports."""
    from flytegpt.ingest.onnx_export import default_cache_root

    return Path(cache_dir) / MODELS_DIR if cache_dir else default_cache_root().parent / MODELS_DIR


def _save(model: "SentenceTransformer", store: str, model_id: str, info: dict, keys: Sequence[str],
          cache_dir: str | None) -> Path:
    """Write a tuned model where readers find it and return its local folder.

    A local store gets it in place; a remote store gets a local copy first (the one this
    process then embeds with), uploaded from there. tune.json comes last: until it exists a
    folder is incomplete and every reader ignores it.
    """
    fs, root = _models_root(store)
    target = join(root, _slug(model_id))
    folder = Path(target) if is_local(fs) else _cache_root(cache_dir) / _slug(model_id)
    model.save(str(folder))
    (folder / PAIRS_FILE).write_text("\n".join(keys))
    report = json.dumps(info, indent=1).encode()
    if not is_local(fs):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != REPORT_FILE:
                atomic_write(fs, join(target, path.relative_to(folder).as_posix()), path.read_bytes())
    atomic_write(fs, join(target, REPORT_FILE), report)  # last: the store's copy is complete
    if not is_local(fs):
        (folder / REPORT_FILE).write_bytes(report)  # and so is the local one
    return folder


def local_model(store: str, model_id: str, cache_dir: str | None = None) -> Path:
    """A local folder holding tuned model `model_id`: the store's own folder when the store is
    local, else a copy in `cache_dir` (default: ~/.cache/flytegpt/models) made once."""
    fs, root = _models_root(store)
    source = join(root, _slug(model_id))
    target = None if is_local(fs) else _cache_root(cache_dir) / _slug(model_id)
    if target is not None and (target / REPORT_FILE).is_file():
        return target  # copied before: the store is not asked again
    if read_bytes(fs, join(source, REPORT_FILE)) is None:
        raise TuningError(
            f"tuned model {model_id} is not in {store} ({MODELS_DIR}/{_slug(model_id)}/{REPORT_FILE} missing): "
            "the index was built from a store that had it; re-ingest to rebuild the index"
        )
    if target is None:
        return Path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        for entry in fs.find(source, detail=False):
            dest = tmp / _safe_relative(entry[len(source):].removeprefix("/"), model_id)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(fs.cat_file(entry))
        tmp.rename(target)
    except TuningError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / REPORT_FILE).is_file():
            raise
    return target


def prune_models(store: str, keep: set[str]) -> list[str]:
    """Delete tuned models that no kept index version names (the newest one always stays)."""
    fs, root = _models_root(store)
    models = sorted(stored_models(store), key=lambda i: i.get("created_at", ""))
    if models:
        keep = keep | {models[-1]["model_id"]}
    removed = []
    for info in models:
        if info["model_id"] not in keep:
            fs.rm(join(root, _slug(info["model_id"])), recursive=True)
            removed.append(info["model_id"])
    return removed


def prune_local_models(cache_dir: str | None, keep: set[str]) -> list[str]:
    """Delete the local copies (`local_model`'s) of tuned models not in `keep`."""
    folder = _cache_root(cache_dir)
    slugs = {m.removeprefix(TUNED_PREFIX) for m in keep if is_tuned(m)}  # only compared with folder names
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.is_dir() and entry.name not in slugs:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("removed %d cached tuned models from %s", len(removed), folder)
    return removed


# ------------------------------------------------------------------ the step


def should_tune(config: Config) -> bool:
    """`[tuning] enabled`: "on", "off", or "auto" = where the embedding runs on a GPU, on which
    tuning takes about as long as embedding does (on a 2-core CPU it takes minutes)."""
    mode = config.tuning.enabled
    if mode != "auto":
        return mode == "on"
    from flytegpt.ingest.embedding import accelerator_possible, select_device

    return accelerator_possible() and select_device(config.embeddings.device).startswith("cuda")


def ensure_tuned(chunks: Sequence[Chunk], config: Config, *, progress: bool = True) -> TuneReport:
    """The tuned model for these chunks: reused from the store when one covers them, else trained,
    judged on the held-out pairs and stored. A refused model is reported, not stored."""
    from flytegpt.ingest.embedding import normalize_model_id, resolve_model_path, select_device

    cfg = config.tuning
    base = normalize_model_id(config.embeddings.model)
    if is_tuned(base):
        raise TuningError(f"[embeddings] model {base} is already a tuned model; name its base model to tune")
    pairs = sample_pairs(training_pairs(chunks), cfg.max_pairs)
    if len(pairs) < cfg.min_pairs:
        raise TooFewPairs(f"only {len(pairs)} training pairs in this corpus, fewer than [tuning] min_pairs = "
                          f"{cfg.min_pairs}: too few to tune on (lower min_pairs to tune anyway, or set "
                          "[tuning] enabled = \"auto\" to embed with the base model)")
    train_pairs, held = split_held_out(pairs, cfg.held_out)
    keys = [p.key for p in pairs]
    counts = {k: sum(1 for p in train_pairs if p.kind == k) for k in ("docs", "slack", "code")}
    found = _reusable(config.index.store, base, cfg, set(keys))
    if found is not None:
        report = TuneReport.from_dict(found)
        report.reused = True
        report.path = str(local_model(config.index.store, report.model_id, config.index.cache_dir))
        return report

    from sentence_transformers import SentenceTransformer

    model_id = tuned_model_id(base, cfg, pairs)
    device = select_device(config.embeddings.device)
    t = time.perf_counter()
    model = SentenceTransformer(resolve_model_path(config.embeddings.model), device=device)
    before = round(mrr(model, held), 4) if held else None  # None: nothing held out ([tuning] held_out = 0)
    precision = train(model, train_pairs, cfg, device=device, progress=progress)
    after = round(mrr(model, held), 4) if held else None
    report = TuneReport(model_id=model_id, base_model=base, pairs=counts, held_out=len(held),
                        held_out_mrr_base=before, held_out_mrr_tuned=after,
                        seconds=round(time.perf_counter() - t, 1), device=device, precision=precision)
    if before is not None and after is not None and after < before:
        report.refused = True
        log.warning("%s", report.describe())
        return report
    info = {**report.to_dict(), "settings": _settings(cfg), "recipe": RECIPE_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    info.pop("path")
    report.path = str(_save(model, config.index.store, model_id, info, keys, config.index.cache_dir))
    log.info("tuning: %s", report.describe())
    return report
