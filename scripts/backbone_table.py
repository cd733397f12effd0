"""Write docs/backbone_table.csv: every backbone of ``list_backbones()`` with its details.

Run from the repository root: ``python scripts/backbone_table.py`` (about a minute:
each network is built on the meta device and its multiply-adds counted). Every
number comes from ``list_backbones(details=True)``; ``tests/test_backbone_details.py``
checks that the file lists every backbone and still holds the computed numbers.
"""

import csv
from pathlib import Path

from sktransfer import list_backbones

TABLE = Path(__file__).resolve().parents[1] / "docs" / "backbone_table.csv"
HEADER = (
    "backbone", "library", "input", "features", "params (M)", "GFLOPs", "ImageNet top-1 (%)"
)  # fmt: skip


def main():
    rows = [
        (
            record["name"],
            record["library"],
            record["input_size"],
            record["feature_dim"],
            f"{record['params'] / 1e6:.2f}",
            f"{record['gflops']:.2f}",
            "" if record["imagenet_top1"] is None else f"{record['imagenet_top1']:.1f}",
        )
        for record in list_backbones(details=True)
    ]
    with TABLE.open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    print(f"wrote {len(rows)} backbones to {TABLE}")


if __name__ == "__main__":
    main()
