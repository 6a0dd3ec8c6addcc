"""Render an HTML report to a PNG screenshot in headless Chromium, to check it the way a person sees it.

    python scripts/screenshot_report.py r.html r.png [--width 1280] [--height 6000] [--max-width 1000] [--palette]

Needs a Chromium binary (Debian: ``apt-get install chromium``; also found as ``chromium-browser``,
``google-chrome``, or given with ``--chromium`` / ``$CHROMIUM``). The page is rendered in a window of
``--width`` x ``--height`` pixels; uniform rows at the bottom (the empty part of the window) are cropped, and
``--max-width`` downscales the result (e.g. to keep a screenshot for the docs small). Exit code 2 when no
Chromium is found or it fails; the one-line reason goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, then the usual names on PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and (found := shutil.which(name)):
            return found
    return None


def screenshot(
    html: Path, out: Path, *, chromium: str, width: int = 1280, height: int = 6000, timeout: float = 120.0
) -> None:
    """Render ``html`` with headless Chromium into the PNG ``out`` (window ``width`` x ``height``)."""
    with tempfile.TemporaryDirectory(prefix="kernelscope-chromium-") as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",  # root in containers and CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            html.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0 or not out.exists():
        tail = " ".join((result.stderr or result.stdout).split())[-300:]
        raise RuntimeError(f"chromium exited with {result.returncode} and wrote no screenshot: {tail}")


def crop_and_scale(path: Path, max_width: int | None = None, palette: bool = False) -> tuple[int, int]:
    """Crop the uniform rows at the bottom of the screenshot, downscale it to ``max_width`` and, with ``palette``,
    reduce it to 256 colours (a much smaller file); returns its size."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    last = image.crop((0, height - 1, width, height)).tobytes()
    bottom = height
    while bottom > 1 and image.crop((0, bottom - 1, width, bottom)).tobytes() == last:
        bottom -= 1
    image = image.crop((0, 0, width, min(height, bottom + 24)))
    if max_width is not None and image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    size = image.size
    if palette:
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, optimize=True)
    return size


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the HTML file to render")
    parser.add_argument("out", type=Path, help="where to write the PNG screenshot")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    parser.add_argument("--height", type=int, default=6000, help="window height in pixels (default 6000)")
    parser.add_argument("--max-width", type=int, default=None, help="downscale the screenshot to this width")
    parser.add_argument("--palette", action="store_true", help="save with 256 colours (smaller file)")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: $CHROMIUM or PATH)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"screenshot_report: error: {args.html} is not a file", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print(
            "screenshot_report: error: no Chromium found (apt-get install chromium, or set $CHROMIUM)", file=sys.stderr
        )
        return 2
    try:
        screenshot(args.html, args.out, chromium=chromium, width=args.width, height=args.height)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"screenshot_report: error: {exc}", file=sys.stderr)
        return 2
    size = crop_and_scale(args.out, args.max_width, args.palette)
    print(f"wrote {args.out} ({size[0]}x{size[1]} px, {args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
