"""Whatever the retrieved sources hold, the prompt's context stays within its budget.

Property tests (hypothesis, derandomized) of context packing (bot/answering/budget.py): any
texts (fences left open, one huge line, blank runs, emoji), any question, any budget.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flytegpt.bot.answering.budget import CharCounter, Source, pack_sources, token_counter

PROPERTY = settings(derandomize=True, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FRAGMENTS = ["\n", "\n\n", "```\n", "```python\n", "~~~\n", "cache", "map_task", "retries", " ", "x" * 2000,
             "[...]", "😀", "\t", "@task(cache=True)\n", "def f():\n    return 1\n"]
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=50)), max_size=60).map("".join)
SOURCES = st.lists(TEXT, max_size=12).map(
    lambda texts: [Source(i + 1, f"d:{i}", f"T{i}", f"https://e.org/{i}", t, 1.0 - i / 100, "docs")
                   for i, t in enumerate(texts)])


@PROPERTY
@given(SOURCES, TEXT, st.integers(min_value=1, max_value=4000))
def test_packed_context_fits_the_budget_and_numbers_run_from_one(sources, question: str, budget: int) -> None:
    counter = CharCounter()
    packed = pack_sources(sources, question, budget, counter)
    assert sum(counter.count(s.text) for s in packed) <= budget
    assert [s.n for s in packed] == list(range(1, len(packed) + 1))
    assert all(s.text.strip() for s in packed)
    originals = {s.source_id: s.text for s in sources}
    for s in packed:  # every kept passage comes from its own source
        for part in s.text.split("[...]"):
            assert all(line in originals[s.source_id] for line in part.strip().split("\n")), s.source_id
    if sum(counter.count(s.text) for s in sources) <= budget:  # everything fits: nothing is cut
        assert [s.text for s in packed] == [s.text for s in sources if s.text.strip()]


@settings(derandomize=True, deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(SOURCES, TEXT, st.integers(min_value=1, max_value=2000))
def test_the_default_token_counter_keeps_the_budget_too(sources, question: str, budget: int) -> None:
    counter = token_counter()
    assert sum(counter.count(s.text) for s in pack_sources(sources, question, budget, counter)) <= budget
