"""The run report's figures, as a user sees them: rendered by headless Chromium at a laptop's window width."""
import re

import numpy as np

from pipeline import report
from tests.conftest import chromium

CLASSES = 20
NAMES = [f"a photographed object kind {i:03d}" for i in range(CLASSES)]  # 30 characters, differing at the end


def _rendered(dom: str, image_id: str):
    match = re.search(rf'<img id="{image_id}"[^>]*data-natural-width="(\d+)"[^>]*data-rendered-width="(\d+)"', dom)
    assert match, f"{image_id} did not load"
    return int(match.group(1)), int(match.group(2))


def test_a_20_class_confusion_matrix_with_long_names_stays_readable_in_a_browser(tmp_path):
    assert len(NAMES[0]) == 30
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 4, (CLASSES, CLASSES)).astype(float) + np.eye(CLASSES) * 25
    fig = report.confusion_figure(matrix, NAMES)
    ax = fig.axes[0]
    fig.canvas.draw()
    cell = ax.get_window_extent().width / CLASSES  # pixels at the saved DPI
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == NAMES  # whole names, each its own row
    heights = [t.get_window_extent().height for t in ax.get_yticklabels()]
    assert max(heights) < cell  # one row's label does not run into the next
    page = tmp_path / "page.html"
    page.write_text(report.html_page("report", f'<img id="confusion-matrix" src="{report._png(fig, tight=True)}">'))
    natural, rendered = _rendered(chromium(str(page), tmp_path / "profile", width=1280), "confusion-matrix")
    scale = rendered / natural
    assert cell * scale >= 20, (cell, scale)  # a cell of at least 20 screen pixels, with its count in it
    assert 9 / 72 * report.DPI * scale >= 9  # 9-pt labels stay at least 9 screen pixels tall
    screenshot = tmp_path / "matrix.png"
    chromium(str(page), tmp_path / "profile", screenshot=screenshot, width=1280, height=1400)
    assert screenshot.stat().st_size > 20000


def test_worst_images_captions_are_legible_at_the_page_width(tmp_path):
    rng = np.random.default_rng(0)
    captions = [f"{report.short(n, 22)}\n→ {report.short(NAMES[0], 22)} 0.9{i}" for i, n in enumerate(NAMES[1:9])]
    fig = report.worst_figure([rng.random((48, 48, 3)) for _ in captions], captions)
    fig.canvas.draw()
    boxes = [ax.title.get_window_extent() for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 8
    for a, b in zip(boxes, boxes[1:]):  # neighbours in a row do not overlap
        if abs(a.y0 - b.y0) < 1:
            assert a.x1 <= b.x0, (a, b)
    page = tmp_path / "page.html"
    page.write_text(report.html_page("report", f'<img id="worst-images" src="{report._png(fig, tight=True)}">'))
    natural, rendered = _rendered(chromium(str(page), tmp_path / "profile", width=1280), "worst-images")
    assert 10 / 72 * report.DPI * rendered / natural >= 10  # 10-pt captions at 10+ screen pixels


def test_short_names_keep_their_distinguishing_end():
    long = [f"{'x' * 50} {i}" for i in range(3)]
    shortened = [report.short(n) for n in long]
    assert len(set(shortened)) == 3 and all(len(s) <= 40 and "…" in s for s in shortened)
    assert report.short("cat") == "cat"
