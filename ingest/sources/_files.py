"""File-tree helpers shared by the docs and code loaders: walking, globs, URLs."""

from __future__ import annotations

import codecs
import io
import os
import re
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import quote

from flytegpt.ingest.models import LoadReport


def glob_match(rel: str, patterns: Iterable[str]) -> bool:
    """True when a pattern matches the relative path, its basename or one of its folders.

    Matching the basename and the folders as well as the whole path lets a config say
    `exclude = ["LICENSE", "_templates"]` and mean it at any depth, which is what people write.
    """
    parts = rel.split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if fnmatch(rel, pattern) or fnmatch(parts[-1], pattern):
            return True
        if any(fnmatch(part, pattern) for part in parts[:-1]):
            return True
        if fnmatch(rel, pattern + "/*"):  # a folder given as a path prefix: "docs/api"
            return True
    return False


def printable_name(rel: str) -> str:
    """A path for reports and logs, also when its bytes are not UTF-8 (shown as U+FFFD)."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_utf8_name(rel: str) -> bool:
    """False for a name os.walk decoded with surrogate escapes: it would break every JSON write."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inside(path: Path, root: Path) -> bool:
    """True when `path`, with every symbolic link resolved, is `root` or lies under it."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def walk_files(root: Path, include: list[str], exclude: list[str], report: LoadReport) -> Iterator[tuple[Path, str]]:
    """(file, posix path relative to root) in a stable order, hidden entries skipped.

    Nothing outside the root is read: a symbolic link whose target leaves the root (a link to
    /etc/passwd in a docs tree) is skipped and reported, as is a file whose name is not UTF-8.
    Folder links are never followed; the real folder, when inside the root, is walked anyway.
    """
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        names = sorted(d for d in dirnames if not d.startswith("."))
        dirnames[:] = []
        for name in names:
            folder = Path(dirpath) / name
            rel = folder.relative_to(root).as_posix()
            if folder.is_symlink():
                if not inside(folder, real_root):
                    report.skip(printable_name(rel), "symbolic link to a folder outside the source root")
                continue
            dirnames.append(name)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if (include and not glob_match(rel, include)) or (exclude and glob_match(rel, exclude)):
                report.left_out += 1
                continue
            if not is_utf8_name(rel):
                report.skip(printable_name(rel), "file name is not valid UTF-8")
                continue
            if path.is_symlink() and not path.exists():
                report.skip(rel, "broken symbolic link (its target does not exist)")
                continue
            if path.is_symlink() and not inside(path, real_root):
                report.skip(rel, "symbolic link to a file outside the source root")
                continue
            yield path, rel


# The page names static site generators serve at their folder's address (Docusaurus, MkDocs,
# Hugo, Jekyll and GitHub all serve docs/setup/index.md, or README.md, as docs/setup/).
_FOLDER_PAGES = ("index", "README", "readme", "_index")


def path_noext(rel: str) -> str:
    """`concepts/acknowledge.md` -> `concepts/acknowledge`: a published page's address, where the
    site keeps the file's path and drops its extension (or gives it another, `{path_noext}.html`)."""
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{folder}/{stem}" if folder else stem


def page_path(rel: str, slug: str | None = None, doc_id: str | None = None) -> str:
    """{path_noext}, but an index or README page, or one named like its folder, is its folder
    (`setup/index.md` -> `setup`, the top `index.md` -> ""): the address a docs site gives a page. A front-matter `slug` (Docusaurus:
    "/x" from the docs' root, "x" beside the page) or `id` (the page's own name) replaces it."""
    folder, _, stem = path_noext(rel).rpartition("/")
    if slug and slug.strip():
        slug = slug.strip()
        return slug.strip("/") if slug.startswith("/") else "/".join(p for p in (folder, slug.strip("/")) if p)
    if doc_id and doc_id.strip() and "/" not in doc_id:
        return "/".join(p for p in (folder, doc_id.strip()) if p)
    # `guide/index.md`, and Docusaurus' `tutorial/ai-chatbot/ai-chatbot.md`, are their folder's page
    return folder if stem in _FOLDER_PAGES or (folder and stem == folder.rsplit("/", 1)[-1]) else path_noext(rel)


def _squeeze_slashes(url: str) -> str:
    """`https://site/{page}/` for the top index page is `https://site//`: one slash in the path."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return f"{scheme}://{re.sub(r'/{2,}', '/', rest[:cut])}{rest[cut:]}"


def render_url(template: str | None, rel: str, path: Path, meta: Mapping[str, str] | None = None) -> str:
    """The page URL from the source's template, or a file:// URI without one.

    {path} is the file's path under the source root (`concepts/acknowledge.md`), {path_noext}
    the same without its extension, {page} that with index/README pages at their folder, or
    where the page's front matter (`meta`) moves it (`slug`, `id`).
    {start}/{end} stay in place: chunks fill them once they know their line range.
    """
    if not template:
        return path.resolve().as_uri()
    meta = meta or {}
    values = {"path": rel, "path_noext": path_noext(rel), "page": page_path(rel, meta.get("slug"), meta.get("id"))}
    url = re.sub(r"\{(path|path_noext|page)\}", lambda m: quote(values[m.group(1)], safe="/"), template)
    return _squeeze_slashes(url) if "{page}" in template else url


def fill_lines(url: str, start: int, end: int) -> str:
    """Fill {start}/{end} in a code URL; a URL without them gets a #Lstart-Lend anchor."""
    if "{start}" in url or "{end}" in url:
        return url.replace("{start}", str(start)).replace("{end}", str(end))
    if "#" in url:
        return url
    return f"{url}#L{start}-L{end}"


def read_text(path: Path, rel: str, report: LoadReport, *, max_bytes: int) -> str | None:
    """A file's text, or None after reporting why it was skipped (empty files are skipped quietly).

    Too big, binary or not UTF-8 is reported so the ingest summary says what was left out.
    """
    try:
        size = path.stat().st_size
    except OSError as e:  # a dangling link, or the file went away during the walk
        report.skip(rel, f"cannot be read: {e.strerror or e}")
        return None
    if not path.is_file():
        report.skip(rel, "not a regular file")
        return None
    if size > max_bytes:
        report.skip(rel, f"larger than {max_bytes} bytes")
        return None
    if size == 0:
        return None
    data = path.read_bytes()
    encoding = _declared_encoding(data, rel)
    if encoding is None and b"\0" in data[:8192]:
        report.skip(rel, "binary file")
        return None
    try:
        text = data.decode(encoding or "utf-8-sig")  # -sig: a byte-order mark is no text
    except (UnicodeDecodeError, LookupError):
        report.skip(rel, f"not {encoding or 'UTF-8'} text")
        return None
    return text if text.strip() else None


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _declared_encoding(data: bytes, rel: str) -> str | None:
    """The encoding a file says it has: a UTF-16/32 byte-order mark (Windows editors save pages
    so), or a Python file's PEP 263 coding line (`# -*- coding: latin-1 -*-`). None: UTF-8."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    if rel.endswith((".py", ".pyi")):
        try:
            found, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        except SyntaxError:  # a coding line naming no codec
            return None
        return None if found in ("utf-8", "utf-8-sig") else found
    return None
