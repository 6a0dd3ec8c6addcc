#!/usr/bin/env python
"""Copy a small, deterministic sample of real CIFAR-10 *test* JPEGs into an image folder.

For each of the 10 classes, the first ``--per-class`` members (sorted by member name) of ``test.tar``
(members ``<class>/<nnnn>.jpg``) are written unmodified (byte-for-byte) to
``<out>/<class>/<nnnn>.jpg``. With the defaults this gives 1000 images (100 per class) in
``examples/data/cifar10-sample``. The script fails if the total size exceeds ``--max-bytes``.

Example (from the repository root)::

    python examples/make_cifar10_sample.py
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "cifar10-jpg").resolve()
DEFAULT_OUT = REPO_ROOT / "examples" / "data" / "cifar10-sample"
CLASS_NAMES: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def make_sample(test_tar: Path, out: Path, per_class: int) -> tuple[int, int]:
    """Write the first ``per_class`` JPEGs of every class of ``test_tar`` to ``out/<class>/``.

    Any existing ``out`` folder is replaced so the result only contains the sample.

    Args:
        test_tar: Path to the CIFAR-10 JPEG ``test.tar``.
        out: Destination image folder.
        per_class: Number of images per class.

    Returns:
        ``(number_of_files, total_bytes)``.
    """
    with tarfile.open(test_tar) as tar:
        by_class: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if member.isfile() and name.suffix.lower() == ".jpg" and name.parent.name in CLASS_NAMES:
                by_class[name.parent.name].append(member)
        missing = [c for c in CLASS_NAMES if len(by_class[c]) < per_class]
        if missing:
            raise ValueError(f"fewer than {per_class} images for classes {missing} in {test_tar}")

        if out.exists():
            shutil.rmtree(out)
        count, total = 0, 0
        for cls in CLASS_NAMES:
            (out / cls).mkdir(parents=True)
            for member in sorted(by_class[cls], key=lambda m: m.name)[:per_class]:
                fh = tar.extractfile(member)
                assert fh is not None, member.name
                data = fh.read()
                (out / cls / PurePosixPath(member.name).name).write_bytes(data)
                count += 1
                total += len(data)
    return count, total


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the sample, check and print its size."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with test.tar")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="destination image folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (default: 100)")
    p.add_argument("--max-bytes", type=int, default=3 * 1024 * 1024, help="size limit (default: 3 MiB)")
    args = p.parse_args(argv)

    count, total = make_sample(args.data_dir / "test.tar", args.out, args.per_class)
    on_disk = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {count} images ({args.per_class} per class) to {args.out}")
    print(f"total JPEG bytes: {total} ({total / 1024 / 1024:.2f} MiB); files on disk sum to {on_disk} bytes")
    if total > args.max_bytes:
        print(f"ERROR: sample exceeds {args.max_bytes} bytes")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
