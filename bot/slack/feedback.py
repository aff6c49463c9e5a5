"""Feedback: which answers helped, stored with everything needed to learn from them.

When an answer is posted, its question, text, sources and index version are stored
under a short random id; the 👍/👎 buttons carry only that id (button values are capped
at 2,000 characters, and a payload in a button would be visible to any client). A click
records the vote with user, channel and time. One vote per user per answer: a second
click replaces the first, so changing your mind does not count twice.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal

Vote = Literal["up", "down"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    surface TEXT,
    channel TEXT,
    thread_ts TEXT,
    user TEXT,
    question TEXT NOT NULL,
    standalone_question TEXT,
    answer TEXT NOT NULL,
    sources TEXT NOT NULL,
    index_version TEXT,
    mode TEXT
);
CREATE TABLE IF NOT EXISTS votes (
    answer_id TEXT NOT NULL REFERENCES answers(id),
    user TEXT NOT NULL,
    vote TEXT NOT NULL CHECK (vote IN ('up', 'down')),
    channel TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (answer_id, user)
);
"""


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


class FeedbackStore:
    """SQLite-backed; safe to share between worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def record_answer(self, answer: Any, *, surface: str, channel: str | None = None,
                      thread_ts: str | None = None, user: str | None = None) -> str:
        """Store an answer about to be posted; returns the id its buttons carry."""
        answer_id = secrets.token_urlsafe(9)
        sources = [asdict(c) if is_dataclass(c) else dict(c) for c in getattr(answer, "citations", [])]
        with self._lock:
            self._conn.execute(
                "INSERT INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (answer_id, time.time(), surface, channel, thread_ts, user, answer.question,
                 getattr(answer, "standalone_question", None), answer.text, json.dumps(sources),
                 getattr(answer, "index_version", None), getattr(answer, "mode", None)),
            )
        return answer_id

    def get_answer(self, answer_id: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,))
            row = cur.fetchone()
            cols = [d[0] for d in cur.description]
        if row is None:
            return None
        d = dict(zip(cols, row))
        d["sources"] = json.loads(d["sources"])
        return d

    def record_vote(self, answer_id: str, vote: Vote, *, user: str, channel: str | None) -> bool:
        """False when the answer id is unknown (e.g. an old message from another database)."""
        if vote not in ("up", "down"):
            raise ValueError(f"vote must be 'up' or 'down', not {vote!r}")
        with self._lock:
            known = self._conn.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if not known:
                return False
            self._conn.execute(
                "INSERT INTO votes VALUES (?,?,?,?,?) ON CONFLICT(answer_id, user) DO UPDATE SET "
                "vote = excluded.vote, channel = excluded.channel, created_at = excluded.created_at",
                (answer_id, user, vote, channel, time.time()),
            )
        return True

    def votes(self) -> list[dict[str, Any]]:
        """Every vote joined with its answer, oldest first (the export rows)."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT v.answer_id, v.vote, v.user, v.channel, v.created_at, a.question, "
                "a.standalone_question, a.answer, a.sources, a.index_version, a.mode, a.surface, "
                "a.created_at, a.thread_ts FROM votes v JOIN answers a ON a.id = v.answer_id "
                "ORDER BY v.created_at, v.answer_id")
            rows = cur.fetchall()
        return [
            {"answer_id": r[0], "vote": r[1], "user": r[2], "channel": r[3], "voted_at": _iso(r[4]),
             "question": r[5], "standalone_question": r[6], "answer": r[7], "sources": json.loads(r[8]),
             "index_version": r[9], "mode": r[10], "surface": r[11], "answered_at": _iso(r[12]),
             "thread_ts": r[13]}
            for r in rows
        ]

    def export_jsonl(self, out: IO[str]) -> int:
        """Write one JSON object per vote; returns how many."""
        rows = self.votes()
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return len(rows)


def export_feedback(db_path: str | Path, out_path: str | Path) -> int:
    """`flytegpt feedback export`: the votes in `db_path` as JSONL in `out_path` ("-" = stdout)."""
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"feedback database not found: {db_path}")
    store = FeedbackStore(db_path)
    try:
        if str(out_path) == "-":
            import sys

            return store.export_jsonl(sys.stdout)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            return store.export_jsonl(f)
    finally:
        store.close()
