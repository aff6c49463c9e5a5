"""Grounded answers with citations: an OpenAI-compatible chat model or an offline quoter."""

from .bulk import answer_many, write_report
from .chain import Answerer
from .types import Answer, Citation, IndexNotReady, ModelUnavailable, QuestionRejected, Turn, keep_turns

__all__ = [
    "Answer",
    "Answerer",
    "Citation",
    "IndexNotReady",
    "ModelUnavailable",
    "QuestionRejected",
    "Turn",
    "answer_many",
    "keep_turns",
    "write_report",
]
