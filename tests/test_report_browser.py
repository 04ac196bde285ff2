"""report.html as a user sees it: opened in headless Chromium, its DOM counted, its screenshot not blank.

Needs a Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
Skipped, saying so, only where there is none; the page's HTML itself is tested by
``test_report_html.py`` either way.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from aaq.cli import main
from pages import AAQ_SPEC, parse, ranked_groups

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed to open report.html in "
                                "(Debian/Ubuntu: apt-get install chromium; .ci/run installs it)")
WIDTH, HEIGHT = 1280, 2000


def open_in_chromium(page: Path, out: Path) -> tuple[str, bytes, str]:
    """Load ``page`` once: its DOM after load, a screenshot (PNG bytes), and Chromium's log (console lines)."""
    shot = out / "screenshot.png"
    profile = out / "profile"  # a fresh profile: nothing from another run, no first-run work
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
               f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists(), f"Chromium wrote no screenshot: {done.stderr[-2000:]}"
    return done.stdout, shot.read_bytes(), done.stderr


def console_lines(log: str) -> list[str]:
    """Console messages and uncaught errors, as Chromium logs them with --enable-logging (``:CONSOLE``)."""
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def png_size_and_variety(png: bytes) -> tuple[int, int, int]:
    """Width, height and how many distinct byte values the (filtered) pixel rows hold: a blank page has ~2."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    return size[0], size[1], len(set(zlib.decompress(idat)))


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    assert main(["run", str(AAQ_SPEC), "--output-dir", str(out), "--no-progress"]) == 0
    return out


def test_report_of_a_tiny_run_loads_without_errors_and_draws_its_charts(tiny_page: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    dom_text, png, log = open_in_chromium(tiny_page / "report.html", tmp_path)
    seconds = time.perf_counter() - started
    assert console_lines(log) == [], "the page logged to the console"
    dom = parse(dom_text)
    aaq = json.loads((tiny_page / "report.json").read_text())["algorithms"][1]["summary"]
    assert {s.attrs["id"] for s in dom.find("section")} >= {"outcome", "sensitivity", "search", "quantization", "time"}
    ranking = dom.one("figure", id="ranking-1")
    assert len(ranking.find("rect", "bar")) == ranked_groups(aaq)
    assert len(ranking.find("rect", "bar", "reverted")) == len(aaq["reverted"])
    assert len(dom.one("figure", id="steps").find("circle", "point")) == len(aaq["steps"]) + 1
    assert len(dom.one("figure", id="drops").find("rect", "bar")) == 1

    width, height, variety = png_size_and_variety(png)
    assert (width, height) == (WIDTH, HEIGHT)
    assert variety > 64, "the screenshot is blank"
    try:
        from PIL import Image
    except ImportError:  # the samples extra has Pillow; without it the byte variety above must do
        return
    import io

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = dict((c, n) for n, c in image.getcolors(WIDTH * HEIGHT))
    assert sum(n for c, n in colours.items() if c != (255, 255, 255)) > 0.02 * WIDTH * HEIGHT, "mostly white"
    assert colours.get((213, 94, 0), 0) > 500, "no reverted bar (#D55E00) painted"
    assert colours.get((0, 114, 178), 0) > 100, "no series colour (#0072B2) painted"
    assert seconds < 60
