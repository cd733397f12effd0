"""Helpers shared by several test files (fixtures live in conftest.py)."""

import subprocess
import sys
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def run_python(script, *args, env=None, timeout=300):
    """Run ``python -c script *args`` in a new process from the repository root.

    Fails the test, with the end of the process's stderr, unless it exits with 0;
    returns the ``CompletedProcess`` (``stdout`` and ``stderr`` as text).
    """
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


class CountingStage(nn.Module):
    """Counts every image through any copy of it (reset ``images_seen``); otherwise the identity."""

    images_seen = 0

    def forward(self, x):
        type(self).images_seen += len(x)
        return x
