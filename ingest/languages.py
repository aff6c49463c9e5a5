"""The one table of source-code languages: file extensions, splitter and Markdown fence names.

The code loader names a file's language, the chunker picks LangChain's splitter for it and
the answerer fences quoted code with it; they must agree, so all three read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Language:
    name: str  # the id a Document carries in meta["language"]
    extensions: tuple[str, ...]
    splitter: str | None  # member of langchain_text_splitters.Language, None: generic splitter
    fence: str  # the info string of a Markdown code fence (syntax highlighting)


LANGUAGES: tuple[Language, ...] = (
    Language("python", (".py", ".pyi"), "PYTHON", "python"),
    Language("go", (".go",), "GO", "go"),
    Language("javascript", (".js", ".jsx", ".mjs"), "JS", "javascript"),
    Language("typescript", (".ts", ".tsx"), "TS", "typescript"),
    Language("java", (".java",), "JAVA", "java"),
    Language("kotlin", (".kt",), "KOTLIN", "kotlin"),
    Language("scala", (".scala",), "SCALA", "scala"),
    Language("rust", (".rs",), "RUST", "rust"),
    Language("ruby", (".rb",), "RUBY", "ruby"),
    Language("php", (".php",), "PHP", "php"),
    Language("c", (".c", ".h"), "C", "c"),
    Language("cpp", (".cc", ".cpp", ".hpp"), "CPP", "cpp"),
    Language("csharp", (".cs",), "CSHARP", "csharp"),
    Language("swift", (".swift",), "SWIFT", "swift"),
    Language("proto", (".proto",), "PROTO", "protobuf"),
    Language("lua", (".lua",), "LUA", "lua"),
    Language("shell", (".sh",), None, "bash"),
    Language("r", (".r",), "R", "r"),
)

_BY_NAME = {lang.name: lang for lang in LANGUAGES}
_BY_EXTENSION = {ext: lang for lang in LANGUAGES for ext in lang.extensions}


def language_of_path(path: str) -> Language | None:
    """The language of a file by its extension (case-insensitive), None when it is not code."""
    return _BY_EXTENSION.get(PurePosixPath(path).suffix.lower())


def language_named(name: str) -> Language | None:
    return _BY_NAME.get(name)
