"""The one owner of FlyteGPT's configuration: the TOML file and the environment.

The file says *what* to index and how to answer; the environment holds secrets and
deployment settings (tokens, endpoints), so a config file can be committed and shared.
Every table forbids unknown keys: a typo must be an error that names the key, not a
setting that silently does nothing.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SourceKind = Literal["docs", "code", "slack_export", "slack_api", "git"]

MAX_KEEP_VERSIONS = 1000  # [index] keep_versions at most; `flytegpt publish` without --config prunes nothing
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key or path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host (what a link in Slack or a model endpoint needs)."""
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an invalid IPv6 literal, a bad port
        return False


_WARNED_PLAIN_HTTP: set[str] = set()


def warn_if_plain_http(name: str, url: str) -> None:
    """Once per URL: a secret (the API key, the bot token) sent over plain http to a host that is
    not this machine travels readable on the way. An in-cluster model server over http is common,
    so it is said, not refused."""
    import ipaddress
    import logging

    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if parts.scheme != "http" or loopback or url in _WARNED_PLAIN_HTTP:
        return
    _WARNED_PLAIN_HTTP.add(url)
    logging.getLogger(__name__).warning(
        "%s is plain http to %s: the credentials sent with each call can be read on the way; use "
        "https, or keep such a server on this machine or behind a TLS proxy", name, host)


# The placeholders a source's `url` template may hold, by kind (as the sources fill them:
# ingest/sources/_files.py render_url / fill_lines, ingest/sources/git.py). A docs page's
# {path_noext} and {page} point at a published site rather than at the Markdown file. A code
# source's {version} is the installed package's version or the commit of the checkout holding its
# path (ingest/sources/code.py source_version): line ranges are of that copy, so its links must be.
_DOC_PAGE = ("path", "path_noext", "page")
_URL_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "docs": _DOC_PAGE,
    "code": ("path", "start", "end", "version"),
    "git:docs": ("commit", "ref", *_DOC_PAGE),
    "git:code": ("commit", "ref", "path", "start", "end"),
}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

# The [[sources]] keys each kind reads (beside name and kind), so a key another kind reads is an
# error rather than a setting that does nothing. "git:code" is a git source read as code: its
# checkout goes through the code loader, which reads skip_tests. Slack exports read
# include/exclude/channels/private_channels (ingest/sources/slack_export.py).
_KEY_KINDS: dict[str, tuple[str, ...]] = {
    "path": ("docs", "code", "slack_export"),
    "package": ("code",),
    "include": ("docs", "code", "git", "slack_export"),
    "exclude": ("docs", "code", "git", "slack_export"),
    "url": ("docs", "code", "git"),
    "workspace_url": ("slack_export", "slack_api"),
    "repo": ("git",),
    "ref": ("git",),
    "as_kind": ("git",),
    "channels": ("slack_export", "slack_api"),
    "private_channels": ("slack_export", "slack_api"),
    "reply_lookback_days": ("slack_api",),
    "refresh_after_days": ("slack_api",),
    "refresh_per_run": ("slack_api",),
    "skip_tests": ("code", "git:code"),
}
# what to write instead, where a key is a common slip for another
_KEY_HINTS = {
    ("url", "slack"): "a Slack thread's link comes from workspace_url",
    ("workspace_url", "files"): "a page's link comes from url",
    ("path", "git"): "a git source reads repo at ref; narrow it with include",
}
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


def channel_id(entry: str) -> str | None:
    """The channel id a [bot] allowed_channels / report_channels entry gives (`C0123ABCD`, also
    written `#C0123ABCD`); None for a channel name, which only Slack can resolve."""
    bare = entry.strip().lstrip("#").strip()
    return bare if _CHANNEL_ID.match(bare) else None


class SourceConfig(_Strict):
    """One source of knowledge. `path` is resolved against the config file's folder."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: SourceKind
    path: Path | None = None
    package: str | None = None  # code: the folder of an installed Python package
    include: list[str] = []
    exclude: list[str] = []
    url: str | None = None  # template with {path}, {start}, {end} (code: also {version})
    workspace_url: str | None = None  # slack: permalinks are built from it
    # git: a repository URL and a ref, then read as `as_kind` (docs or code)
    repo: str | None = None
    ref: str = "HEAD"
    as_kind: Literal["docs", "code"] | None = None
    # slack_api: channel names or ids to read (empty: every channel the bot is in);
    # slack_export: channel names to read (empty: every public channel of the export)
    channels: list[str] = []
    # slack_export / slack_api: also read private channels (groups.json; those the bot was
    # invited to). Direct messages are never read: the bot quotes what it indexed to anyone.
    private_channels: bool = False
    # slack_api: threads started up to this many days before the last ingest are re-checked
    # for new replies (Slack's history lists thread parents, not replies, by time)
    reply_lookback_days: float = Field(default=30.0, ge=0, le=3650)
    # slack_api: a thread not read for this many days is read again (what the history cannot show:
    # an edited reply, a deletion older than reply_lookback_days), at most refresh_per_run of them
    # per run (one conversations.replies call each), longest unread first
    refresh_after_days: float = Field(default=30.0, ge=0, le=3650)
    refresh_per_run: int = Field(default=50, ge=0, le=100_000)
    skip_tests: bool = True  # code: skip tests, vendored and binary files

    @model_validator(mode="after")
    def _keys_apply(self) -> "SourceConfig":
        """A key this kind never reads (`channels` on a docs source, `skip_tests` on a Slack
        export) is an error naming the kinds that do read it: silently ignored, it would look
        like a filter or a link that works."""
        kinds = {self.kind, f"git:{self.as_kind}"} if self.kind == "git" else {self.kind}
        unused = [k for k in _KEY_KINDS if k in self.model_fields_set and not kinds & set(_KEY_KINDS[k])]
        what = f"a git source read as {self.as_kind}" if self.kind == "git" and self.as_kind else f"a {self.kind} source"
        if len(unused) == 1:
            raise ValueError(f"{unused[0]!r} has no effect on {what}: {self._readers(unused[0])}; remove it")
        if unused:
            raise ValueError(f"these keys have no effect on {what}, remove them: "
                             + ", ".join(f"{k!r} ({self._readers(k)})" for k in unused))
        return self

    def _readers(self, key: str) -> str:
        """"only code and git (as_kind = "code") sources read it", with a hint where there is one."""
        readers = [k.replace("git:code", 'git (as_kind = "code")') for k in _KEY_KINDS[key]]
        listed = readers[0] if len(readers) == 1 else ", ".join(readers[:-1]) + " and " + readers[-1]
        family = "slack" if self.kind.startswith("slack") else "git" if self.kind == "git" else "files"
        hint = _KEY_HINTS.get((key, family))
        return f"only {listed} sources read it" + (f"; {hint}" if hint else "")

    @model_validator(mode="after")
    def _needs_location(self) -> "SourceConfig":
        if self.kind in ("docs", "slack_export") and self.path is None:
            raise ValueError(f"source {self.name!r} ({self.kind}) needs 'path'")
        if self.kind == "code" and self.path is None and self.package is None:
            raise ValueError(f"source {self.name!r} (code) needs 'path' or 'package'")
        if self.kind == "git" and (self.repo is None or self.as_kind is None):
            raise ValueError(f"source {self.name!r} (git) needs 'repo' and 'as_kind'")
        return self

    @model_validator(mode="after")
    def _checked_urls(self) -> "SourceConfig":
        kind = f"git:{self.as_kind}" if self.kind == "git" else self.kind
        allowed = _URL_PLACEHOLDERS.get(kind)
        if self.url is not None and allowed is not None:
            unknown = [p for p in _PLACEHOLDER.findall(self.url) if p not in allowed]
            if unknown:
                raise ValueError(
                    f"url: unknown placeholder {{{unknown[0]}}} in {self.url!r} "
                    f"(a {kind.replace(':', ' read as ')} source's url may use "
                    + ", ".join(f"{{{p}}}" for p in allowed) + ")"
                )
            # a link Slack and a terminal can open; "docs/{path}" would make every citation a bare label
            if not is_http_url(_PLACEHOLDER.sub("x", self.url.strip())):
                raise ValueError(f"url must be an http(s) URL template such as "
                                 f"https://example.org/docs/{{path}}, not {self.url!r}")
        if self.workspace_url is not None and not is_http_url(self.workspace_url.strip()):
            raise ValueError(f"workspace_url must be an http(s) URL such as https://example.slack.com, "
                             f"not {self.workspace_url!r}")
        return self

    def root(self) -> Path:
        """The folder (or zip) this source reads, checked to exist."""
        if self.package is not None and self.path is None:
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError(
                    f"source {self.name!r}: package {self.package!r} is not installed"
                )
            return Path(next(iter(spec.submodule_search_locations)))
        assert self.path is not None
        if not self.path.exists():
            raise ConfigError(f"source {self.name!r}: path does not exist: {self.path}")
        return self.path


class IndexConfig(_Strict):
    store: str = ".flytegpt/store"  # a local folder or an fsspec URL (s3://, gs://)

    @field_validator("store")
    @classmethod
    def _store_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: give a folder or an fsspec URL (s3://, gs://), "
                             "or leave the key out for .flytegpt/store")
        return value
    # "auto": exact search (flat) below `approximate_threshold` chunks, IVF above it. IVF-PQ was
    # measured and left out: it missed recall@10 >= 0.95 at 1M without a flat re-rank, which
    # gives back the memory it saves (tests/bench/bench_index.py).
    index_type: Literal["auto", "flat", "ivf"] = "auto"
    approximate_threshold: int = Field(default=200_000, ge=1, le=10_000_000_000)
    # Versions kept in the store after a publish (oldest deleted first), besides the one LATEST
    # names, the one it named before (bots may still serve it until their next poll) and those
    # made from newer sources than LATEST's (not published yet, or rolled back from).
    keep_versions: int = Field(default=7, ge=1, le=MAX_KEEP_VERSIONS)
    # A new version is not published when a source that gave chunks gives none, or when the index
    # (or a source of 50 chunks or more) has lost more than this fraction of what LATEST holds, as
    # when an include pattern stopped matching or a Slack channel was renamed: the run fails and the
    # bots keep the good index. 1 turns it off; `flytegpt publish VERSION` publishes one anyway.
    max_shrink: float = Field(default=0.25, ge=0, le=1)
    cache_dir: str | None = None  # local copy of remote versions (the bot downloads here)


class EmbeddingsConfig(_Strict):
    model: str = DEFAULT_MODEL
    # texts per forward pass on a CPU. Small batches stay in the CPU's cache: 8 embeds ~10% more
    # per second than 32 in fp32, bf16 and int8 alike, and holds less memory (bench_embed.py)
    batch_size: int = Field(default=8, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # "auto" (default): OpenVINO on a CPU (an fp32 ONNX export of the model, same vectors as
    # PyTorch), PyTorch on a GPU or when OpenVINO is missing. "torch", "openvino": force one.
    # Speeds: tests/bench/RESULTS.md "Performance"; see ingest/embedding.py.
    backend: Literal["auto", "torch", "openvino"] = "auto"
    # "auto": fp16 on CUDA; on a CPU the fastest of fp32, bf16 and (auto_int8) int8, measured
    # (ingest/autotune.py). "int8"/"int8-bf16": OpenVINO's calibrated int8 model (ingest/quantize.py)
    # with the layers it keeps out of int8 in fp32/bf16; "int8-dq": int8 weights, activations
    # quantised at run time. Where they can't be made, fp32 with a warning. Each precision but fp32
    # first runs in a child process, once per machine: one that crashes OpenVINO here is not used
    # (ingest/openvino_trial.py); "auto" takes int8 only at 25% over fp32 and bf16 (ingest/autotune.py).
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8", "int8-bf16", "int8-dq"] = "auto"
    # "auto" on a CPU also measures the int8 models, made once per model from 64 of the corpus's
    # chunks (NNCF, 15-45 s) and checked once per machine, each only when its vectors keep a mean
    # cosine >= 0.999 to fp32 on 64 others there.
    auto_int8: bool = True
    # ... made only by an embedding of at least this many texts: a small or incremental ingest
    # never waits for it (the first large one on a machine does, once; a Flyte CPU pod, whose
    # cache dies with it, each time: auto_int8 = false there).
    int8_min_texts: int = Field(default=1000, ge=128, le=100_000_000)
    gpu_batch_size: int = Field(default=256, ge=1, le=65536)  # texts per forward pass on CUDA (fp16, length-sorted)
    onnx_cache_dir: str | None = None  # ONNX exports; None: $FLYTEGPT_ONNX_CACHE or ~/.cache/flytegpt/onnx
    # new vectors per embedding-cache shard written while an ingest embeds: a killed ingest
    # loses at most this many, and each shard costs one file in the store
    cache_shard_size: int = Field(default=1024, ge=1, le=1_000_000)
    # The Flyte workflow embeds only the chunks the store's embedding cache has no vector for; more
    # than `fanout_above` of them go in shards of about `fanout_shard_size` chunks (cut by content,
    # so a new page changes one shard), one GPU task each (map_task), cached by the shard's content.
    fanout_above: int = Field(default=200_000, ge=1, le=1_000_000_000)
    fanout_shard_size: int = Field(default=100_000, ge=1, le=1_000_000_000)


class RetrievalConfig(_Strict):
    k: int = Field(default=10, ge=1, le=1000)  # results per search
    # Tuned on ../shared/eval/dev.jsonl and tests/eval/dev_howto.jsonl (tests/bench/bench_retrieval.py):
    # min-max fusion with dense weighted 0.6, a source scored by its best dense and its best
    # keyword match (fused) + 0.1 x its second best chunk, one chunk per source in the results,
    # 60 candidates from each retriever. The figures behind each choice: tests/bench/RESULTS.md, "Retrieval".
    dense_weight: float = Field(default=0.6, ge=0.0, le=1.0)  # fused score = w * dense + (1 - w) * keyword (min-max normalised)
    max_per_source: int = Field(default=1, ge=0, le=1000)  # at most this many chunks of one source id in the results (0: no cap)
    candidates: int = Field(default=60, ge=1, le=100_000)  # candidates taken from each retriever before fusion
    source_bonus: float = Field(default=0.1, ge=0.0, le=10.0)  # a source scores its best matches + source_bonus x its second best chunk
    # A question of at most `short_question_words` topic words (stopwords left out) is about a
    # topic: a source's outline (page title, first paragraph, headings; a module's contents) then
    # adds outline_weight x its fused score (for every question it hurt the longer ones).
    outline_weight: float = Field(default=0.2, ge=0.0, le=10.0)
    short_question_words: int = Field(default=5, ge=0, le=1000)
    # ... and a docs page adds this to its score: the page about a topic is its canonical answer,
    # while Slack threads and functions that share a word or two with it are about one case of it.
    # Not when the question names an identifier (snake_case, dotted) or a number: it asks about that.
    short_question_docs_bonus: float = Field(default=0.15, ge=0.0, le=10.0)
    # A question of at most `title_question_words` topic words (a little longer than a short
    # one: a title is one phrase) adds, for each docs page, title_weight x how close the page's
    # title alone is to it (cosine, min-max over the candidate pages): "How do I get a GPU for my
    # training task?" is the page "Configuring access to GPUs" in other words.
    title_weight: float = Field(default=0.3, ge=0.0, le=10.0)
    title_question_words: int = Field(default=6, ge=0, le=1000)
    # A message of several questions ("How do I cache a task? And how do I set GPU resources?") is
    # also searched one question at a time, up to this many (0: never): the results start with the
    # whole message's best source, then each question's best source (ingest/search.py).
    split_questions: int = Field(default=4, ge=0, le=20)


class TuningConfig(_Strict):
    """Domain tuning of the embedding model (ingest/tuning.py; figures: tests/bench/RESULTS.md "Retrieval")."""

    # "auto": tune where the embedding runs on a GPU (seconds to minutes); on a CPU-only machine
    # it takes minutes per thousand pairs, so "on" asks for it there. "off": the base model.
    enabled: Literal["auto", "on", "off"] = "auto"
    epochs: float = Field(default=1.0, gt=0, le=20)
    batch_size: int = Field(default=32, ge=2, le=4096)  # pairs per step; the others are each pair's negatives
    learning_rate: float = Field(default=2e-5, gt=0, le=1e-2)
    max_seq_length: int = Field(default=128, ge=16, le=512)  # tokens per text while training
    held_out: float = Field(default=0.1, ge=0.0, lt=1.0)  # share of pairs kept out of training to judge it
    max_pairs: int = Field(default=50_000, ge=0, le=10_000_000)  # a random sample above this (0: all)
    min_pairs: int = Field(default=200, ge=1, le=10_000_000)  # fewer: the corpus is too small to tune on
    # a stored tuned model is reused while its training pairs cover this share of today's pairs
    reuse_overlap: float = Field(default=0.9, ge=0.0, le=1.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # CPU training; "auto" times both on the first steps
    seed: int = 0


# [answer] context_window must leave at least this many tokens after max_tokens: the instructions
# (~470-510 tokens with the default [project], by the bot's counter or tiktoken's), the margin (5%), a
# question and an excerpt of a source or two. At 768 a window of 1,792 with max_tokens 1,024 sent a
# question of 36 tokens no source (at 512, a window of 1,024 with max_tokens 512 answered no question).
# Kept a constant (the prompts live in bot/, which this module may not import): tests/bot/
# test_model_setup.py checks that the smallest windows it allows still send a source.
MIN_PROMPT_TOKENS = 1024
MIN_ANSWER_TOKENS = 16  # max_tokens' own floor


class AnswerConfig(_Strict):
    # Tokens of sources in the prompt. 6,000 sends the ten sources of every one of the 299 eval
    # questions whole (median 3,200 tokens, at most 4,700); at 2,000, 68% of them were cut to
    # excerpts, and 20 questions lost the lines that answer them (a CI login's client id and secret,
    # a Slack thread's reply). A small local model's window bounds it further (context_window).
    token_budget: int = Field(default=6000, ge=100, le=1_000_000)
    min_score: float = Field(default=0.0, ge=0.0, le=10.0)  # below this fused score nothing counts as relevant
    # Below this best cosine similarity (question vs any retrieved chunk) nothing counts as
    # relevant. The fused score is min-max normalised per query, so it is high even for
    # off-topic questions; the raw cosine is not. 0.25: on the eval corpus every dev
    # question's best cosine is >= 0.37 (0.33 with the earlier, smaller docs chunks), and 9 of 12
    # off-topic questions score below 0.25.
    min_similarity: float = Field(default=0.25, ge=-1.0, le=1.0)
    # Then "I couldn't find this" lists as closest matches only sources at least this similar: 12
    # off-topic questions' best cosine on the eval corpus is 0.10-0.28 (8 below 0.2); Flyte
    # questions it has no answer to ("can flyte tasks be written in rust?") score 0.56-0.74.
    closest_min_similarity: float = Field(default=0.2, ge=-1.0, le=1.0)
    max_question_chars: int = Field(default=4000, ge=1, le=1_000_000)
    history_turns: int = Field(default=6, ge=0, le=100)  # earlier turns a follow-up is read with
    # With a chat model: a thread's first question is searched together with the model's search terms
    # for it (one short extra call, at most a quarter of deadline_s; skipped when it fails). Off by
    # default: retrieval's figures are measured without it (tests/bench/RESULTS.md "Retrieval").
    rewrite_query: bool = False
    timeout_s: float = Field(default=60.0, gt=0, le=3600)  # one model call
    max_retries: int = Field(default=2, ge=0, le=20)  # model calls retried after a failure
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=60)  # first wait between model retries; doubles each time
    retry_max_wait_s: float = Field(default=5.0, ge=0, le=600)  # cap on any wait, including a server's Retry-After
    # numbered sources in one prompt (after de-duplication by source); all ten retrieved sources,
    # cut to excerpts when they don't fit token_budget whole (bot/answering/budget.py)
    max_sources: int = Field(default=10, ge=1, le=50)
    # One overall deadline per answer, from the question to the model's last word (condensing,
    # retries and waits included); past it the asker gets the best passages with a note that
    # the model did not answer. Well under a minute: nobody waits longer in a chat.
    deadline_s: float = Field(default=45.0, ge=1.0, le=600.0)
    # Cap on the model's answer (tokens), so a runaway answer cannot fill a thread. ~1,000
    # tokens is ~4,000 characters, longer than any good chat answer.
    max_tokens: int = Field(default=1024, ge=16, le=32_768)
    # The request field max_tokens is sent as. "auto": max_completion_tokens to OpenAI (no base URL,
    # api.openai.com, *.openai.azure.com), whose reasoning models refuse max_tokens; max_tokens to any
    # other server (Ollama's /v1 reads only that). Set it for a proxy in front of OpenAI (LiteLLM).
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    # The chat model's context window in tokens (what vLLM calls max_model_len, Ollama num_ctx); 0:
    # unknown. Set, each question's sources are cut so that the prompt (instructions, sources,
    # question) plus max_tokens fits it, with a small margin (the bot counts with its own tokenizer,
    # not the model's): a 4k or 2k local model answers long questions instead of failing them.
    # A question too long to fit even without sources gets the passages, not a model call.
    context_window: int = Field(default=0, ge=0, le=100_000_000)

    @model_validator(mode="after")
    def _window_holds_an_answer(self) -> "AnswerConfig":
        """A window that max_tokens alone fills could never hold a prompt: every question would get
        the passages. Said at start, naming both settings."""
        if self.context_window and self.context_window < self.max_tokens + MIN_PROMPT_TOKENS:
            if self.context_window < MIN_ANSWER_TOKENS + MIN_PROMPT_TOKENS:
                raise ValueError(f"context_window ({self.context_window}) is too small for a prompt and an answer: "
                                 f"FlyteGPT needs a model with a window of at least "
                                 f"{MIN_ANSWER_TOKENS + MIN_PROMPT_TOKENS} tokens (2,048 or more to answer well)")
            raise ValueError(f"context_window ({self.context_window}) leaves less than {MIN_PROMPT_TOKENS} tokens "
                             f"for the prompt after max_tokens ({self.max_tokens}): write the model's window "
                             f"(e.g. 4096, 8192) or lower max_tokens to {self.context_window - MIN_PROMPT_TOKENS} "
                             "or less")
        return self


FLYTE = "Flyte"
# Flyte's parts as the prompts named them before the project was configurable (bot/answering/prompts.py)
FLYTE_DESCRIPTION = "flytekit, flytectl, FlytePropeller, FlyteAdmin"
FLYTE_ASSISTANT = "FlyteGPT"
# What a Flyte index holds (flytekit and the Flyte 1 docs and Slack): a question about the Flyte 2 SDK,
# whose `flyte` package is no flytekit, must not get a flytekit answer
FLYTE_SOURCES_DESCRIBE = "Flyte 1.x and flytekit, not the Flyte 2 SDK (`import flyte`, `TaskEnvironment`, `flyte.run`)"
FLYTE_SUGGESTED_PROMPTS = (
    "How do I cache a task's outputs?",
    "How do I run a map task over a list of inputs?",
    "How do I request a GPU for a task?",
)


def is_flyte(name: object) -> bool:
    """Is this project name Flyte's (whose defaults are the Flyte wording)?"""
    return isinstance(name, str) and name.strip().casefold() == FLYTE.casefold()


class ProjectConfig(_Strict):
    """The project the bot answers about. The model's prompts and the usage text name it, so a
    question about another project is never framed as one about Flyte. Left out: Flyte, as before."""

    name: str = Field(default=FLYTE, max_length=100)  # as people write it: "Bolt for Python"
    # A few words the prompts add after the name, in parentheses: its parts, packages or tools
    # ("slack_bolt, its adapters, the Slack Web API"). Left out: Flyte's for Flyte, none otherwise;
    # "" drops it.
    description: str | None = Field(default=None, max_length=300)
    # What the assistant calls itself in the prompts and the usage text: the Slack app's display
    # name. Left out: "FlyteGPT" for Flyte; otherwise none, and it says "I" and "@ me".
    assistant_name: str | None = Field(default=None, max_length=80)
    # The language the sources are written in. With a chat model, a question written mostly in
    # another script (Chinese, Cyrillic, ...) is searched with the model's search terms in this
    # language: the packaged embedding model and the keyword index read English only.
    language: str = Field(default="English", max_length=40)
    # What the sources cover, product and version, as the answer prompt states it: "The sources
    # describe {this}." ("Bolt for Python 1.x, not Bolt for JavaScript"). With it the model can tell an
    # asker on another major version or SDK that the sources do not cover it, instead of carrying their
    # APIs over. Left out: Flyte 1's for Flyte (FLYTE_SOURCES_DESCRIBE), none otherwise; "" drops it.
    sources_describe: str | None = Field(default=None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _flyte_defaults(cls, data: Any) -> Any:
        """Flyte's wording for the Flyte project (the default), so its prompts stay what they were."""
        if isinstance(data, dict) and is_flyte(data.get("name", FLYTE)):
            return {"description": FLYTE_DESCRIPTION, "assistant_name": FLYTE_ASSISTANT,
                    "sources_describe": FLYTE_SOURCES_DESCRIBE, **data}
        return data

    @field_validator("name", "description", "assistant_name", "language", "sources_describe")
    @classmethod
    def _one_line(cls, value: str | None, info: Any) -> str | None:
        """Each goes into a sentence of a prompt: one line, no blank name."""
        if value is None:
            return None
        value = value.strip()
        if "\n" in value or "\r" in value:
            raise ValueError("must be one line")
        if not value:
            if info.field_name == "name":
                raise ValueError("is empty: write the project's name, e.g. \"Bolt for Python\"")
            if info.field_name == "language":
                raise ValueError("is empty: write the language of the sources, e.g. \"English\"")
            return None  # an empty description, assistant name or sources_describe: none
        return value

    @property
    def is_flyte(self) -> bool:
        return is_flyte(self.name)

    @property
    def in_english(self) -> bool:
        return self.language.casefold() == "english"


# Slack's rule for a slash command: a slash, then lowercase letters, digits, "-" or "_" (32 in all)
_SLASH_COMMAND = re.compile(r"^/[a-z0-9_-]{1,31}$")


class BotConfig(_Strict):
    @field_validator("allowed_channels", "suggested_prompts", "report_channels")
    @classmethod
    def _no_blank_entries(cls, value: list[str] | None) -> list[str] | None:
        for i, item in enumerate(value or []):
            if not item.strip():
                raise ValueError(f"entry {i + 1} is empty: remove it or write the text")
        return value

    thread_followups: bool = True
    allowed_channels: list[str] = []  # empty: every channel the bot is in
    workers: int = Field(default=4, ge=1, le=256)  # answers computed at once
    queue_size: int = Field(default=32, ge=1, le=100_000)  # questions waiting for a worker
    user_rate_limit: int = Field(default=10, ge=0, le=10_000)  # questions per user per minute; 0: no limit
    # Questions one user may have running or queued at once; one more is refused with a notice
    # (not queued, not counted against user_rate_limit). The per-minute limit alone let one
    # user's burst fill the shared queue ahead of everyone.
    user_in_flight: int = Field(default=2, ge=1, le=10_000)
    reload_interval_s: float = Field(default=60.0, gt=0, le=86_400)  # LATEST polled this often
    feedback_db: str = ".flytegpt/feedback.sqlite3"
    http_port: int = Field(default=8080, ge=0, le=65535)  # /healthz, /readyz, /metrics; 0: any free port
    json_logs: bool = False
    # On SIGTERM running answers get this long to finish; then each unfinished asker is told to
    # ask again. Plus the bot's own shutdown steps (bot/serve.py SHUTDOWN_OVERHEAD_S) this must fit
    # in the pod's terminationGracePeriodSeconds (manifests/base/deployment.yaml: 30 s).
    shutdown_grace_s: float = Field(default=20.0, ge=0, le=3600)
    # /healthz (the pod's liveness) stays ok this long after the Socket Mode connection is lost:
    # slack_sdk reconnects by itself, and restarting the pod during a Slack outage only adds a
    # cold start (and, repeated, a crash-loop back-off that outlasts the outage). A client that
    # stopped trying is restarted once this has passed.
    socket_grace_s: float = Field(default=180.0, ge=0, le=86_400)
    # An answer Slack keeps refusing for a passing reason (429 rate limited, 5xx, its own
    # internal_error, the network) after the client's own retries is kept and posted again in
    # the background (Retry-After honoured, else 5 s, 10 s, 20 s ... at most 60 s apart) for up
    # to this long; only then is the asker told Slack did not take it. 0: no second chance (the
    # notice at once). /flytegpt answers stay within their response_url's 30 minutes.
    deferred_post_s: float = Field(default=300.0, ge=0, le=3600)
    # Answers appear as the model writes them (chat.startStream/appendStream/stopStream);
    # false: one chat.postMessage when the answer is complete (also the automatic fallback
    # where Slack refuses streaming).
    streaming: bool = True
    # `flytegpt serve` asks the chat model endpoint once at start, in the background, whether it serves
    # FLYTEGPT_CHAT_MODEL with this key (its model list, else a 1-token completion) and logs one warning
    # naming what is wrong (model not found, key rejected, not an OpenAI API), instead of the first
    # askers finding out. It never holds up the start. false: no call (an endpoint billed per request).
    check_model: bool = True
    # The slash command the bot answers: the Slack app manifest's features.slash_commands command
    # (manifests/slack-app-manifest.json), which Slack sends with each use. The usage text names it.
    command: str = "/flytegpt"
    # Offered when someone opens the assistant panel (Slack shows at most 4). Left out: three
    # Flyte questions for the Flyte project ([project] name), none for another project.
    suggested_prompts: list[str] = Field(default_factory=lambda: list(FLYTE_SUGGESTED_PROMPTS), max_length=4)
    # The maintainers' report (`flytegpt report`, the weekly_report Flyte task). Channels whose
    # questions it shows, by id; None: the allowed channels (empty: every channel).
    report_channels: list[str] | None = None
    report_dms: bool = False  # DMs and the assistant panel are private: left out unless true
    # A copy of the feedback database (local path or fsspec URL) that `flytegpt feedback
    # snapshot` writes and the weekly_report task reads; the task cannot see the bot's volume.
    feedback_snapshot: str | None = None
    feedback_snapshot_interval_h: float = Field(default=24.0, ge=0.1, le=168.0)  # how often the bot copies it
    # Knowledge gaps: two questions share a topic above this cosine similarity (average linkage)
    report_topic_similarity: float = Field(default=0.4, ge=0.0, le=1.0)
    report_eval_questions: str | None = None  # JSONL eval questions: metrics per index version
    # Days a logged question's text (and its answer's) is kept in the feedback database; the bot
    # blanks older ones at start and daily, keeping what the report counts (times, outcomes,
    # sources, votes). 0: keep the text forever.
    retention_days: int = Field(default=365, ge=0, le=36_500)

    @field_validator("command")
    @classmethod
    def _slash_command(cls, value: str) -> str:
        """The command Bolt matches exactly: a name Slack would refuse could never be answered."""
        if not _SLASH_COMMAND.match(value):
            raise ValueError(f"{value!r} is not a Slack slash command: a \"/\" then up to 31 lowercase "
                             "letters, digits, \"-\" or \"_\", e.g. \"/boltbot\" (the same as in the app's manifest)")
        return value


class Config(_Strict):
    project: ProjectConfig = ProjectConfig()
    sources: list[SourceConfig] = []
    index: IndexConfig = IndexConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    tuning: TuningConfig = TuningConfig()
    answer: AnswerConfig = AnswerConfig()
    bot: BotConfig = BotConfig()
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _prompts_of_the_project(self) -> "Config":
        """Another project than Flyte offers no suggested prompts unless it writes its own: the
        Flyte questions would only find unrelated passages in its index."""
        if not self.project.is_flyte and "suggested_prompts" not in self.bot.model_fields_set:
            object.__setattr__(self, "bot", self.bot.model_copy(update={"suggested_prompts": []}))  # frozen
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names: {', '.join(dupes)}")
        return self

    def with_store(self, store: str | None) -> "Config":
        if store is None:
            return self
        if not store.strip():  # an unset shell variable: never the current folder by accident
            raise ConfigError("--store is empty: give a folder or an fsspec URL (s3://, gs://), "
                              "or leave --store out for the configured [index] store")
        return self.model_copy(update={"index": self.index.model_copy(update={"store": store})})


class Settings(BaseSettings):
    """Secrets and deployment settings, from the environment only (never from the file)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    chat_model: str = Field(default="gpt-4o-mini", alias="FLYTEGPT_CHAT_MODEL")
    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str | None = Field(default=None, alias="SLACK_API_URL")

    @field_validator("openai_api_key", "openai_base_url", "chat_model", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: Any) -> Any:
        """`OPENAI_API_KEY=` (an empty secret, a blank .env line, a Helm value left empty) means
        unset, as the manifest promises: the offline answerer, not a model call that fails."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return cls.model_fields[info.field_name].default  # None, or the default chat model
        return value

    def checked_openai_base_url(self) -> str | None:
        """OPENAI_BASE_URL, or a ConfigError naming it when it is no http(s) URL with a host
        (otherwise each answer retries a call that can never connect)."""
        url = self.openai_base_url
        if url is not None and not is_http_url(url):
            raise ConfigError(f"OPENAI_BASE_URL {url!r} is not an http(s) URL: unset it for OpenAI's own "
                              "or give a base URL such as http://localhost:11434/v1")
        if url is not None:
            _check_no_deployment_url(url)
        if url is not None and self.openai_api_key is not None:
            warn_if_plain_http("OPENAI_BASE_URL", url)
        return url


_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/?#]+)", re.I)


def _check_no_deployment_url(url: str) -> None:
    """A ConfigError for a base URL the OpenAI client cannot call: one with a query string (the client
    appends "/chat/completions" after it: `…?api-version=2024-10-21chat/completions`) and Azure
    OpenAI's classic deployment URL (`/openai/deployments/<name>`, which also wants an `api-version`
    and an `api-key` header). Azure's v1 endpoint, `https://<resource>.openai.azure.com/openai/v1/`,
    takes the plain client with the key as a Bearer token and the deployment name as the model
    (learn.microsoft.com, "Azure OpenAI API version lifecycle"), so that is what the error says to
    write. The query's value is never repeated: a proxy may carry a key there."""
    parts = urlsplit(url)
    bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    deployment = _AZURE_DEPLOYMENT.search(parts.path)
    host = (parts.hostname or "").lower()
    # only on Azure's own hosts: LiteLLM serves an Azure-compatible /openai/deployments/<model> route that
    # the plain client calls well, and so may a gateway in front of Azure
    on_azure = host.endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"))
    if deployment is not None and on_azure:
        root = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path[:deployment.start()]}/openai/v1/"
        raise ConfigError(f"OPENAI_BASE_URL {bare!r} is an Azure OpenAI deployment URL, which the OpenAI client "
                          f"cannot call: use Azure's v1 endpoint, OPENAI_BASE_URL={root} with "
                          f"FLYTEGPT_CHAT_MODEL={deployment.group(1)} (the deployment's name) and the resource's "
                          "key as OPENAI_API_KEY; no api-version is needed")
    if parts.query:
        raise ConfigError(f"OPENAI_BASE_URL {bare!r} has a query string (?…), which the OpenAI client cannot keep "
                          "(it appends /chat/completions after it): give the base URL alone, such as "
                          "https://host/v1 (for Azure OpenAI: https://<resource>.openai.azure.com/openai/v1/)")


# The settings that name a local file or folder (or, where a URL is allowed, a URL). Written in
# a config file, a relative one is relative to that file, wherever the command is run from;
# a default (`.flytegpt/...`, not written in the file) is relative to the working directory.
_PATH_KEYS = {
    "index": ("store", "cache_dir"),
    "embeddings": ("onnx_cache_dir",),
    "bot": ("feedback_db", "feedback_snapshot", "report_eval_questions"),
}


def _resolve_paths(raw: dict, base: Path) -> dict:
    for source in raw.get("sources", []) or []:
        if isinstance(source, dict) and source.get("path") is not None:
            source["path"] = (base / Path(str(source["path"])).expanduser()).resolve()
    for table, keys in _PATH_KEYS.items():
        values = raw.get(table)
        if not isinstance(values, dict):
            continue
        values = raw[table] = dict(values)
        for key in keys:
            value = values.get(key)
            if isinstance(value, str) and "://" not in value and value.strip():
                # ~ as on the command line (never a folder literally named "~" beside the config)
                values[key] = str((base / Path(value).expanduser()).resolve())
    return raw


def _nth(items: object, i: int) -> object:
    return items[i] if isinstance(items, list) and 0 <= i < len(items) else None


def _describe(error: ValidationError, raw: dict) -> str:
    lines = []
    for err in error.errors():
        loc = list(err["loc"])
        if loc and loc[0] == "sources" and len(loc) > 1 and isinstance(loc[1], int):
            entry = _nth(raw.get("sources"), loc[1])
            name = entry.get("name", f"#{loc[1] + 1}") if isinstance(entry, dict) else f"#{loc[1] + 1}"
            where = f"sources[{name}]" + "".join(f".{p}" for p in loc[2:])
        else:
            where = ".".join(str(p) for p in loc) or "config"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")  # our own validators' words, as written
            lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_config(raw: dict, base_dir: Path) -> Config:
    """Validate an already-parsed TOML/dict configuration; relative paths are under `base_dir`."""
    sources = raw.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise ConfigError("sources: expected a list of tables ([[sources]] entries), "
                          f"found {type(sources).__name__ if not isinstance(sources, list) else 'a list with other values'}")
    raw = _resolve_paths(dict(raw), base_dir)
    raw["base_dir"] = base_dir
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, raw)) from None
    for source in config.sources:
        if source.kind in ("docs", "code", "slack_export") and (
            source.path is not None or source.package is not None
        ):
            source.root()  # raises ConfigError naming the missing path or package
        if source.kind == "code" and "{version}" in (source.url or ""):
            from flytegpt.ingest.sources.code import source_version

            source_version(source)  # raises ConfigError when the version cannot be known, saying what to write
    return config


def load_config(path: str | Path) -> Config:
    """Read a FlyteGPT TOML file. Errors name the file and the key or path at fault."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM from a Windows editor
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        return parse_config(raw, path.resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def sample_config_path() -> Path:
    """The bundled sample corpus's configuration: the embedded default of `make demo`."""
    return Path(__file__).parent / "sample" / "flytegpt.toml"
