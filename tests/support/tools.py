"""External tools some tests need (kubectl, moto's S3 server): skipped on a developer's machine
without them, a failure in CI, where `make test` installs them and a skip would hide a gap."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def tools_required() -> bool:
    """True in CI (CI=true, as CI runs .ci/run) or when FLYTEGPT_REQUIRE_TOOLS=1."""
    flags = (os.environ.get("CI", ""), os.environ.get("FLYTEGPT_REQUIRE_TOOLS", ""))
    return any(flag.lower() in ("1", "true", "yes") for flag in flags)


def missing_tool(why: str) -> NoReturn:
    """Skip the test, or fail it where the tools are required."""
    if tools_required():
        pytest.fail(f"{why}: CI requires it (`make test` installs it)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def find_executable(name: str) -> str | None:
    """`name` from the project's virtual environment (where `make test` puts tools), else PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)
