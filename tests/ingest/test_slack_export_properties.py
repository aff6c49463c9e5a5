"""Whatever a Slack export's day files hold, the ingest reads the rest and names what it skipped.

Property tests (hypothesis, derandomized): messages whose fields have the wrong type (a number
as text, a list as user, a dict as ts), timestamps out of any calendar, markup left open, users
and channels files of the wrong shape. One odd message must not stop an ingest.
"""

from __future__ import annotations

import json
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flytegpt.ingest.chunking import chunk_document
from flytegpt.ingest.config import SourceConfig
from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources.slack_export import load_slack_export

PROPERTY = settings(derandomize=True, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ODD = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
TS = st.one_of(st.sampled_from(["1600000000.000100", "1600000001.000200", "1600000002", "99999999999999999999.1",
                                "0.0", "-1.5", "1e9", ""]), ODD)
TEXT = st.one_of(st.sampled_from(["How do I cache a task?", "<@U1> try `cache=True`", "<https://e.org|docs> &amp; more",
                                  "<!channel>", "<#C1>", "<", "<@", "&#x110000;", "\x00", "😀", ""]), ODD)
MESSAGE = st.fixed_dictionaries(
    {"ts": TS},
    optional={"text": TEXT, "user": st.one_of(st.sampled_from(["U1", "U2"]), ODD),
              "thread_ts": TS, "type": st.one_of(st.just("message"), ODD), "subtype": ODD,
              "user_profile": st.one_of(st.fixed_dictionaries({"real_name": TEXT}), ODD),
              "team": ODD, "bot_id": st.one_of(st.none(), st.just("B1"))},
)
DAY = st.one_of(st.lists(MESSAGE, max_size=8), ODD)
USERS = st.one_of(st.just([{"id": "U1", "name": "ann", "profile": {"display_name": "Ann"}}]),
                  st.lists(st.one_of(st.fixed_dictionaries({"id": ODD, "profile": ODD}), ODD), max_size=3), ODD)
CHANNELS = st.one_of(st.just([{"id": "C1", "name": "general"}]), st.lists(ODD, max_size=3), ODD)


@PROPERTY
@given(st.lists(DAY, min_size=1, max_size=3), USERS, CHANNELS)
@example([[{"ts": "1600000000.000100", "text": 5, "user": ["U1"]}]], [], [])
@example([[{"ts": "99999999999999999999.1", "text": "hi", "user": "U1"}]], [], [])
def test_any_export_is_read_or_reported_never_fatal(days: list, users, channels) -> None:
    with TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        (root / "general").mkdir(parents=True)
        (root / "users.json").write_text(json.dumps(users))
        (root / "channels.json").write_text(json.dumps(channels))
        for i, day in enumerate(days):
            (root / "general" / f"2024-01-0{i + 1}.json").write_text(json.dumps(day))
        report = LoadReport()
        source = SourceConfig(name="slack", kind="slack_export", path=str(root))
        docs = list(load_slack_export(source, report))
    for doc in docs:
        assert doc.text.strip() and doc.title and doc.url
        for chunk in chunk_document(doc):
            assert chunk.text.strip()
