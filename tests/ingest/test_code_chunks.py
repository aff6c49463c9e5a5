"""Which parts of a Python module become passages (chunks that can be quoted as answers)."""

from __future__ import annotations

from flytegpt.ingest.chunking import chunk_document, is_evidence
from flytegpt.ingest.models import Document

_BODY = "\n\ndef handler(event, context):\n    \"\"\"Run the app on AWS Lambda.\"\"\"\n" + \
    "".join(f"    step_{i} = event.get('k{i}')\n" for i in range(60)) + \
    "    return context\n\n\ndef helper():\n    return 1\n"


def _passages(text: str) -> list[str]:
    doc = Document("c", "m.py", "code", "m", "file:///m.py", text, {"language": "python", "module": "m"})
    return [c.text for c in chunk_document(doc) if not is_evidence(c)]


def test_a_header_of_imports_alone_is_no_passage():
    """Before, a tenth of a package's chunks were its modules' import lines, served and
    quoted as answers ("How do I run the app on AWS Lambda?" quoted 11 import lines)."""
    header = ('"""Lambda adapter."""\nimport logging\nfrom typing import TYPE_CHECKING\n\n'
              "try:\n    import boto3\nexcept ImportError:\n    boto3 = None\n"
              "if TYPE_CHECKING:\n    from x import Y\n__all__ = ['handler']\n")
    passages = _passages(header + _BODY)
    assert passages and all("import logging" not in p for p in passages)
    assert any("def handler" in p for p in passages)


def test_a_header_that_does_something_or_explains_the_module_stays():
    for header in ('import os\nTIMEOUT = int(os.environ.get("T", "3"))\n',
                   '"""' + "Why this module exists, at length. " * 12 + '"""\nimport os\n'):
        assert any(p.startswith(header.split("\n")[0]) for p in _passages(header + _BODY)), header


def test_a_module_of_imports_alone_is_kept():
    """A package's __init__ that only re-exports: its imports are all there is to find."""
    assert _passages('"""The package."""\nfrom .core import App\nfrom .adapter import handler\n') == \
        ['"""The package."""\nfrom .core import App\nfrom .adapter import handler']


def test_a_span_of_comments_alone_is_no_passage():
    """Before, "# -------------------------" between definitions was served as an answer."""
    big = "def first(event):\n" + "".join(f"    step_{i} = event.get('key_{i}')\n" for i in range(90))
    rule = "# " + "-" * 60 + "\n# helpers below\n# " + "-" * 60 + "\n"
    last = "def last():\n" + "".join(f"    v{i} = {i}\n" for i in range(60))
    passages = _passages(f"import os\nLIMIT = 3\n\n\n{big}\n\n{rule}\n\n{last}")
    assert any(p.startswith("def last") for p in passages)
    assert not [p for p in passages if p.lstrip().startswith("# ---")]
