"""The docs are tested code: every Python block of README.md and docs/*.rst runs, in order.

Sybil collects each page's ``python`` blocks (visible, and invisible setup
blocks) and its ``>>>`` examples; they share one namespace per page, as if
pasted in order into one fresh interpreter. Each page runs in an empty
temporary folder, which is also its home directory (for ``~/`` paths), so it
must make every file it reads itself, as a reader would.
"""

import os
import shutil
import tempfile

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser as MarkdownPythonParser
from sybil.parsers.rest import DocTestParser
from sybil.parsers.rest import PythonCodeBlockParser as RestPythonParser

_SAVED = "__docs_saved_state__"


def _enter_empty_folder(namespace):
    folder = tempfile.mkdtemp(prefix="sktransfer-docs-")
    namespace[_SAVED] = (os.getcwd(), os.environ.get("HOME"), folder)
    os.chdir(folder)
    os.environ["HOME"] = folder


def _leave_folder(namespace):
    cwd, home, folder = namespace.pop(_SAVED)
    os.chdir(cwd)
    if home is None:
        os.environ.pop("HOME", None)
    else:
        os.environ["HOME"] = home
    shutil.rmtree(folder, ignore_errors=True)


_page = {"setup": _enter_empty_folder, "teardown": _leave_folder}

pytest_collect_file = (
    Sybil(parsers=[MarkdownPythonParser()], patterns=["README.md"], name="readme", **_page)
    + Sybil(
        parsers=[RestPythonParser(), DocTestParser()],
        patterns=["docs/*.rst"],
        name="docs",
        **_page,
    )
).pytest()
