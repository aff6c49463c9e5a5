"""Which way of running the embedding model is fastest on this machine, decided by measuring it.

CPU flags do not say it: on one CPU with native bf16 OpenVINO embeds about twice as fast in
bf16 as in fp32, on another with the same flags bf16 is slower than fp32. So "auto" runs each
candidate (e.g. OpenVINO fp32 and bf16) on a few batches of fixed texts with the real model,
interleaved and repeated so a change of load on a shared machine hits every candidate, and
keeps the fastest. The baseline (fp32) is kept unless another candidate is faster by a clear
margin: noise must never make "auto" slower than fp32.

The result is cached per machine and model in `autotune.json` beside the ONNX exports
(`[embeddings] onnx_cache_dir`, `$FLYTEGPT_ONNX_CACHE`, or ~/.cache/flytegpt/onnx), not in the
index store: the answer belongs to the machine, a store is shared by machines of different
kinds (GPU nodes, laptops, the bot's pods), and the bot may only read the store. The key holds
the CPU model, its flags, the CPUs this process may use, the runtime's version and the model's
export, so a new CPU, container limit, OpenVINO release or model measures again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from flytegpt.ingest.json_files import read_json_dict, write_json_atomic

log = logging.getLogger(__name__)

CACHE_FILE = "autotune.json"
# A candidate must beat the baseline by this much to be chosen: two runs of one candidate on a
# shared 2-core machine differ by 5-10%.
MARGIN = 0.10
# A candidate whose vectors differ more from fp32's ("lossy": the int8 models, mean cosine ~0.9993
# where bf16 keeps 0.9999+) must beat the best of the others by this much. Its ranking differs too:
# on an Intel Xeon with AMX, int8-bf16 at 1.08x bf16's speed scored dev MRR@10 0.815 against
# bf16's and fp32's 0.834; where int8 is the only way past fp32 (no bf16), it is 1.5-1.6x faster.
LOSSY_MARGIN = 0.25
ROUNDS = 3  # timed passes per candidate at most, interleaved; the median counts
# A candidate slower than the baseline by this factor in the middle of a pass is stopped: a
# load spike does not make a candidate that would win 10% faster take 2.5x as long.
HOPELESS = 2.5


class Encoder(Protocol):
    def encode(self, texts: Sequence[str], batch_size: int = 8) -> Any: ...


@dataclass(frozen=True)
class Choice:
    """What "auto" chose, why, and what it measured (texts per second per candidate)."""

    choice: str  # a candidate label, e.g. "openvino bf16"
    reason: str
    rates: dict[str, float] = field(default_factory=dict)
    measured: bool = True  # False: read from the cache file
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(rates: Mapping[str, float], baseline: str, margin: float = MARGIN, *,
           lossy: Collection[str] = (), lossy_margin: float = LOSSY_MARGIN) -> tuple[str, str]:
    """(label, reason): the fastest candidate if it beats `baseline` by `margin`, else `baseline`;
    a `lossy` candidate only if it also beats that choice by `lossy_margin`.

    A candidate that could not be measured is absent from `rates`; if the baseline is absent,
    the fastest of the others wins.
    """
    if not rates:
        raise ValueError("no candidate could be measured")
    exact = {k: v for k, v in rates.items() if k not in lossy}
    if not exact or len(exact) == len(rates):
        return _decide(rates, baseline, margin)
    label, reason = _decide(exact, baseline, margin)
    best = max((k for k in rates if k in lossy), key=lambda k: rates[k])
    fastest = max(exact, key=lambda k: exact[k])  # not always the choice: bf16 at +9% keeps fp32
    ratio = rates[best] / max(rates[fastest], 1e-9)
    if ratio >= 1 + lossy_margin and rates[best] >= rates.get(baseline, 0.0) * (1 + margin):
        return best, f"{best} {rates[best]:.1f} texts/s = {ratio:.2f}x {fastest} ({rates[fastest]:.1f})"
    if rates[best] > rates[label]:
        reason += (f"; {best} {rates[best]:.1f} texts/s is not {lossy_margin:.0%} faster than {fastest}, "
                   "not enough for its less exact vectors")
    return label, reason


def _decide(rates: Mapping[str, float], baseline: str, margin: float) -> tuple[str, str]:
    best = max(rates, key=lambda k: rates[k])
    if baseline not in rates:
        return best, f"{best}: {rates[best]:.1f} texts/s ({baseline} could not run)"
    base = rates[baseline]
    if best == baseline:
        return baseline, f"{baseline} is the fastest ({base:.1f} texts/s)"
    if rates[best] >= base * (1 + margin):
        return best, f"{best} {rates[best]:.1f} texts/s = {rates[best] / base:.2f}x {baseline} ({base:.1f})"
    return baseline, (
        f"{best} {rates[best]:.1f} texts/s is not clearly faster than {baseline} {base:.1f} "
        f"(needs +{margin:.0%}): keeping {baseline}"
    )


def measure(
    encoders: Mapping[str, Encoder],
    texts: Sequence[str],
    batch_size: int,
    rounds: int = ROUNDS,
    *,
    baseline: str | None = None,
    lossy: Collection[str] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Texts per second of each encoder: up to `rounds` timed passes, interleaved (the order
    reverses every round), median. An encoder that fails is left out, with a warning.

    No separate warm-up: OpenVINO's first pass over these shapes measured within 0-17% of the
    next ones (slower, never faster), so at worst it plays against a candidate, never for one.
    With `baseline`, the baseline runs first and a pass goes batch by batch: a candidate that
    has already taken `HOPELESS` times the baseline's pass is stopped there and measured no
    more (it cannot win; bf16 emulated on a CPU without it ran 4.5x slower than fp32 and cost
    the first answer of a bot 45 s). The measurement stops after two rounds when each round
    alone leads to the same decision (`decide`): a clear case costs two passes per candidate, a
    close one `rounds`.
    """
    alive = {baseline: encoders[baseline], **encoders} if baseline in encoders else dict(encoders)
    times: dict[str, list[float]] = {label: [] for label in alive}
    stopped: dict[str, float] = {}  # label -> its rate when it was stopped for being hopeless
    decisions: set[str] = set()
    for r in range(rounds):
        for label in list(alive) if r % 2 == 0 else list(reversed(alive)):
            limit = None
            if baseline is not None and label != baseline and times.get(baseline):
                limit = HOPELESS * min(times[baseline])
            try:
                elapsed, done = _timed_pass(alive[label], texts, batch_size, clock, limit)
            except Exception as e:  # noqa: BLE001 - a candidate this CPU cannot run is not chosen
                if r > 0:
                    raise
                log.warning("autotune: %s failed (%s); not a candidate", label, e)
                del alive[label], times[label]
                continue
            if done < len(texts):
                stopped[label] = done / max(elapsed, 1e-9)
                log.info("autotune: %s stopped after %.1fs, over %.1fx %s's pass: it cannot win",
                         label, elapsed, HOPELESS, baseline)
                del alive[label], times[label]
                continue
            times[label].append(elapsed)
        if baseline is not None and times:
            round_rates = {label: len(texts) / max(ts[r], 1e-9) for label, ts in times.items()}
            decisions.add(decide(round_rates, baseline, lossy=lossy)[0])
            if len(alive) <= 1 or (r >= 1 and len(decisions) == 1):
                break
    rates = {label: len(texts) / max(statistics.median(ts), 1e-9) for label, ts in times.items()}
    return {**rates, **stopped}


def _timed_pass(
    encoder: Encoder, texts: Sequence[str], batch_size: int, clock: Callable[[], float], limit: float | None
) -> tuple[float, int]:
    """(seconds, texts done) of one pass; with a `limit`, batch by batch, stopping once over it."""
    t = clock()
    if limit is None:
        encoder.encode(texts, batch_size=batch_size)
        return clock() - t, len(texts)
    done = 0
    while done < len(texts) and (done == 0 or clock() - t <= limit):
        batch = texts[done:done + batch_size]
        encoder.encode(batch, batch_size=batch_size)
        done += len(batch)
    return clock() - t, done


def sample_texts(tokens: Sequence[int] = (256, 192, 128, 64), per_length: int = 4) -> list[str]:
    """Fixed texts the lengths of real chunks: most are cut at the model's 256-token window."""
    words = ("flyte task workflow cache version map_task container image secret resources "
             "launch plan schedule FlyteFile dataclass retries timeout node execution").split()
    out = []
    for n in tokens:
        for i in range(per_length):
            out.append(" ".join(words[(i + j) % len(words)] for j in range(n - 2)))  # ~1 token a word
    return out


def machine_facts() -> dict[str, Any]:
    """What makes one machine embed at another speed than the next: CPU, flags, usable CPUs."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return {"cpu": model, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16], "cpus": cpus,
            "system": platform.system(), "machine": platform.machine()}


def cache_key(facts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def read_cached(path: Path, key: str) -> Choice | None:
    try:
        entry = json.loads(path.read_text())[key]
        return Choice(entry["choice"], entry["reason"], dict(entry["rates"]), measured=False, key=key)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(path: Path, choice: Choice, facts: Mapping[str, Any]) -> None:
    """Add `choice` to the cache file (atomic rename); a file that cannot be written is only logged."""
    entries = read_json_dict(path)
    entries[choice.key] = {"choice": choice.choice, "reason": choice.reason, "rates": choice.rates,
                           "facts": dict(facts), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        write_json_atomic(path, entries, indent=1, sort_keys=True)
    except OSError as e:
        log.warning("autotune: could not write %s (%s); the next run measures again", path, e)


def choice_key(candidates: Sequence[str], baseline: str, facts: Mapping[str, Any], batch_size: int,
               lossy: Collection[str] = ()) -> str:
    rule = {"lossy": sorted(lossy), "lossy_margin": LOSSY_MARGIN} if lossy else {}
    return cache_key({**facts, "candidates": sorted(candidates), "baseline": baseline, "batch_size": batch_size,
                      **rule})


def known_choice(
    candidates: Sequence[str], baseline: str, *, facts: Mapping[str, Any], cache_file: Path, batch_size: int,
    lossy: Collection[str] = (),
) -> Choice | None:
    """The choice `choose` would make without measuring (the only candidate, or one measured
    before on this machine), else None: a caller can then build just that candidate its own way."""
    key = choice_key(candidates, baseline, facts, batch_size, lossy)
    if len(candidates) == 1:
        (label,) = candidates
        return Choice(label, f"{label} is the only candidate on this machine", measured=False, key=key)
    cached = read_cached(cache_file, key)
    if cached is None or cached.choice not in candidates:
        return None
    log.info("embedding: auto chose %s (measured before on this machine: %s)", cached.choice, cached.reason)
    return cached


def choose(
    candidates: Mapping[str, Callable[[], Encoder]],
    baseline: str,
    *,
    facts: Mapping[str, Any],
    cache_file: Path,
    batch_size: int,
    texts: Sequence[str] | None = None,
    lossy: Collection[str] = (),
) -> tuple[Choice, Encoder]:
    """The chosen candidate and its encoder: from the cache file when this machine and model were
    measured before (only that candidate is built), else measured now (every candidate built).
    `lossy`: candidates whose vectors differ more from the baseline's (see LOSSY_MARGIN)."""
    cached = known_choice(candidates, baseline, facts=facts, cache_file=cache_file, batch_size=batch_size,
                          lossy=lossy)
    if cached is not None:
        return cached, candidates[cached.choice]()
    key = choice_key(candidates, baseline, facts, batch_size, lossy)
    encoders: dict[str, Encoder] = {}
    for label, make in candidates.items():
        try:
            encoders[label] = make()
        except Exception as e:  # noqa: BLE001 - e.g. a precision this CPU plugin refuses
            log.warning("autotune: %s could not be loaded (%s); not a candidate", label, e)
    t = time.perf_counter()
    rates = measure(encoders, texts or sample_texts(), batch_size, baseline=baseline, lossy=lossy)
    label, reason = decide(rates, baseline, lossy=lossy)
    choice = Choice(label, reason, {k: round(v, 2) for k, v in rates.items()}, measured=True, key=key)
    log.info("embedding: auto chose %s after measuring for %.1fs: %s", label, time.perf_counter() - t, reason)
    write_cached(cache_file, choice, facts)
    return choice, encoders[label]
