"""Child processes that crash or hang at start-up, the way a native crash in OpenVINO ends them.

A `sitecustomize` module on the children's path (ingest/openvino_trial.py hands its sys.path to the
children it starts) kills or stalls each new Python process while the environment asks for it;
this process, already started, is not touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SITECUSTOMIZE = '''
import os, signal, time
what = os.environ.get("FLYTEGPT_TEST_CHILD")
if what == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
elif what == "hang":
    time.sleep(600)
elif what == "terminated":  # Ctrl-C, a stop, the OOM killer: from outside, not the CPU
    os.kill(os.getpid(), signal.SIGTERM)
elif what == "no-op":  # exits cleanly without embedding anything
    os._exit(0)
'''


def make_children(what: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, new Python processes started with this one's path "segfault", "hang", are
    "terminated" from outside, or exit cleanly at once ("no-op")."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("FLYTEGPT_TEST_CHILD", what)
