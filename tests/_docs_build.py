"""The docs build that runs every gallery example, started in the background.

The build is the suite's longest single job (every example, one after the
other), so it starts with the session rather than when pytest-xdist gets to
``tests/test_examples.py``, which it schedules after the bigger files: the
other tests then run beside it. Both xdist workers try to start it; creating
the build folder decides which one does, and the other waits on the result
file. Run as a script, this module is that background job: it builds and
records the exit status, so any process can wait for it.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the build needs beyond the test extras: the docs extra (scripts/setup.sh installs both).
BUILD_NEEDS = ("sphinx", "sphinx_gallery", "numpydoc", "matplotlib", "skimage", "dask.distributed")
# The whole build (every example once) took about 4 minutes on 2 quiet CPU cores and 5 beside
# the other tests; half an hour is over 3x that on a slower machine, and a hung example still
# cannot hang CI.
BUILD_TIMEOUT_S = 1800
LOG, STATUS = "build.log", "returncode"


def can_build():
    """Whether every package the build needs is installed."""
    return all(_installed(module) for module in BUILD_NEEDS)


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package of a dotted name
        return False


def build_folder(config, tmp_path_factory):
    """The folder of this test run's build, the same in every xdist worker."""
    base = tmp_path_factory.getbasetemp()
    # xdist gives each worker its own basetemp inside the run's shared one.
    return (base.parent if hasattr(config, "workerinput") else base) / "docs-build"


def start(folder):
    """Copy the sources into ``folder`` and start the build there.

    Returns the running process, or None when another process started it
    already (``folder`` existed) or it could not start (the log says why, and
    waiting for it fails at once).
    """
    try:
        folder.mkdir()
    except FileExistsError:
        return None
    try:
        built = ("_build", "auto_examples", "generated")
        shutil.copytree(ROOT / "docs", folder / "docs", ignore=shutil.ignore_patterns(*built))
        shutil.copytree(
            ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("*.png", *built)
        )
        return subprocess.Popen([sys.executable, __file__, str(folder)], cwd=folder)
    except Exception:
        (folder / LOG).write_text(traceback.format_exc())
        _record(folder, -1)
        return None


def wait(folder, timeout=BUILD_TIMEOUT_S + 120):
    """Wait for the build in ``folder``; return its exit status and log."""
    deadline = time.monotonic() + timeout
    while not (folder / STATUS).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the docs build in {folder} did not finish in {timeout} s")
        time.sleep(1)
    log = folder / LOG
    return int((folder / STATUS).read_text()), log.read_text() if log.exists() else ""


def _build(folder):
    returncode = -1
    try:
        with open(folder / LOG, "w") as log:
            try:
                returncode = subprocess.run(
                    [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", "html"],
                    cwd=folder,
                    env={**os.environ, "MPLBACKEND": "Agg"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT_S,
                ).returncode
            except subprocess.TimeoutExpired:
                print(f"\nthe build took more than {BUILD_TIMEOUT_S} s", file=log)
    finally:
        _record(folder, returncode)


def _record(folder, returncode):
    # Always written, and whole (then renamed), so a waiting process never hangs on it
    # or reads half of it.
    (folder / f"{STATUS}.tmp").write_text(str(returncode))
    (folder / f"{STATUS}.tmp").rename(folder / STATUS)


if __name__ == "__main__":
    _build(Path(sys.argv[1]))
