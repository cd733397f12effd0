"""Helpers shared by several test files (fixtures live in conftest.py)."""

import struct
import subprocess
import sys
from pathlib import Path

from PIL import Image, TiffImagePlugin
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


#: EXIF tags of a phone photo's first IFD, by name.
ORIENTATION, RESOLUTION_UNIT = 0x0112, 0x0128
#: TIFF field types: 2 is ASCII, 3 SHORT (EXIF types run 1-13).
ASCII = 2


def phone_exif(orientation=6) -> bytes:
    """An EXIF block as a phone writes one: camera, date, resolution, exposure and GPS."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "Phone Maker"
    exif[0x0110] = "Model 12 Pro"
    exif[0x0132] = "2024:05:01 12:00:00"
    exif[0x011A] = exif[0x011B] = TiffImagePlugin.IFDRational(72, 1)
    exif[RESOLUTION_UNIT] = 2
    exposure = exif.get_ifd(0x8769)
    exposure[0x829A] = TiffImagePlugin.IFDRational(1, 120)
    exposure[0x829D] = TiffImagePlugin.IFDRational(18, 10)
    exposure[0x8827] = 100
    exposure[0x9003] = "2024:05:01 12:00:00"
    exposure[0x9286] = b"ASCII\0\0\0a user comment"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = tuple(TiffImagePlugin.IFDRational(v, 1) for v in (51, 30, 0))
    return exif.tobytes()


def exif_entries(block: bytes) -> tuple[str, dict[int, int]]:
    """Byte order of an EXIF block, and where each tag's 12-byte entry of its first IFD starts."""
    tiff = 6  # after b"Exif\0\0"
    order = "<" if block[tiff : tiff + 2] == b"II" else ">"
    ifd = tiff + struct.unpack(order + "I", block[tiff + 4 : tiff + 8])[0]
    (count,) = struct.unpack(order + "H", block[ifd : ifd + 2])
    starts = [ifd + 2 + 12 * i for i in range(count)]
    return order, {struct.unpack(order + "H", block[at : at + 2])[0]: at for at in starts}


def retyped(block: bytes, tag: int, field_type: int) -> bytes:
    """``block`` with ``tag`` declared of another TIFF field type, as buggy writers leave it."""
    order, entries = exif_entries(block)
    at = entries[tag]
    return block[: at + 2] + struct.pack(order + "H", field_type) + block[at + 4 :]
