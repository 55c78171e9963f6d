"""The HTML report opens in a real browser with every figure: headless Chromium loads it from disk and reports,
for each <img>, whether it decoded and at what size. Needs the Debian package `chromium` (`make setup` installs
it); skipped, saying so, where no Chromium is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from analysis import report, runs as runs_mod
from test_analysis import sweep_records, write_runs

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "google-chrome-stable")
# Appended to a copy of the report: after the page's load event, record each image's decoded size on <html>.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth,
                                                h: i.naturalHeight, alt: i.alt}));
  document.documentElement.setAttribute('data-images', JSON.stringify(imgs));
});</script>"""


def chromium() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium); cannot render the report")


def images_as_loaded(page: Path, workdir: Path) -> list[dict]:
    """Open `page` (a copy with the probe) in headless Chromium; the images as the browser decoded them."""
    probe = workdir / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={workdir / 'chrome-profile'}", "--virtual-time-budget=10000", "--dump-dom",
         probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-images="([^"]*)"', proc.stdout)
    assert found, f"the page never finished loading in Chromium (rc={proc.returncode}): {proc.stderr[-1500:]}"
    return json.loads(html.unescape(found.group(1)))


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])   # the IHDR chunk
    return width, height


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    df = runs_mod.load_folders([write_runs(tmp / "runs", sweep_records())])
    out = tmp / "reports" / "demo"
    report.build(df, out)
    return out


def test_every_figure_loads_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    loaded = images_as_loaded(built / "report.html", tmp_path)
    pngs = sorted((built / "figures").glob("*.png"))
    assert len(loaded) == len(pngs) == 5
    assert all(img["ok"] for img in loaded), [img["alt"] for img in loaded if not img["ok"]]
    # each embedded image is the PNG written next to the report, decoded at its full size
    assert sorted((img["w"], img["h"]) for img in loaded) == sorted(png_size(p) for p in pngs)
    assert all(img["w"] >= 400 and img["h"] >= 300 for img in loaded)


def test_the_probe_sees_a_broken_image(built: Path, tmp_path: Path) -> None:
    """The check above can fail: a page with one corrupt image is reported as such."""
    broken = tmp_path / "broken.html"
    page = (built / "report.html").read_text()
    broken.write_text(re.sub(r"src='data:image/png;base64,[^']+'", "src='data:image/png;base64,AAAA'", page, count=1))
    loaded = images_as_loaded(broken, tmp_path)
    assert [img["ok"] for img in loaded].count(False) == 1 and len(loaded) == 5
