"""Files in encodings other than UTF-8 that say which one they are are read, not skipped."""

from __future__ import annotations

from pathlib import Path

from flytegpt.ingest.models import LoadReport
from flytegpt.ingest.sources._files import read_text


def _read(tmp_path: Path, name: str, data: bytes) -> tuple[str | None, LoadReport]:
    path = tmp_path / name
    path.write_bytes(data)
    report = LoadReport()
    return read_text(path, name, report, max_bytes=1_000_000), report


def test_a_python_file_with_a_coding_line_is_read_in_its_encoding(tmp_path):
    """Before, a valid latin-1 module with a PEP 263 coding line was skipped as "not UTF-8"."""
    source = "# -*- coding: latin-1 -*-\n\ndef greet():\n    return 'Grüße'\n"
    text, report = _read(tmp_path, "greet.py", source.encode("latin-1"))
    assert text == source and report.skipped == []


def test_pages_with_a_byte_order_mark_are_read_without_it(tmp_path):
    """A UTF-16 page (Windows editors) was called a binary file; a UTF-8 BOM stayed in the text."""
    page = "# Setup\n\nInstall it.\n"
    for data in (page.encode("utf-16"), b"\xef\xbb\xbf" + page.encode()):
        text, report = _read(tmp_path, "setup.md", data)
        assert text == page and report.skipped == []


def test_undeclared_non_utf8_and_binary_files_are_still_skipped_with_a_reason(tmp_path):
    assert dict(_read(tmp_path, "a.md", "Grüße".encode("latin-1"))[1].skipped) == {"a.md": "not UTF-8 text"}
    assert dict(_read(tmp_path, "b.md", b"PNG\0\0data")[1].skipped) == {"b.md": "binary file"}
    bad = "# -*- coding: no-such-codec -*-\nx = 'Grüße'\n".encode("latin-1")  # names no codec: UTF-8 or nothing
    assert dict(_read(tmp_path, "b.py", bad)[1].skipped) == {"b.py": "not UTF-8 text"}
