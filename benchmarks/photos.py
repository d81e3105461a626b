"""Generated colour photo folders (no network): one sub-folder per class of JPEG files of mixed sizes.

Each image is a textured background (smooth colour noise with fine grain, and clutter shapes) with one
object whose shape names its class (circle, square, triangle, star, cross, ...), at a random colour,
size, position and rotation. Used by benchmarks/image_bench.py (2,000-10,000 images, 100-260 px) and by
the tests (a few dozen images, 32-48 px).
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.photo_suite import outline

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "bar", "diamond")


def _background(rng, width: int, height: int) -> Image.Image:
    grid = rng.integers(0, 256, size=(rng.integers(3, 7), rng.integers(3, 7), 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, rng.uniform(5, 25), size=(height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):  # clutter: blurred blobs and lines of other colours
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(3, max(4, min(width, height) // 8))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - 2 * r, x + r, y + 2 * r], fill=colour)
        else:
            draw.line([x, y, x + rng.integers(-width // 2, width // 2), y + rng.integers(-height // 2, height // 2)],
                      fill=colour, width=int(rng.integers(1, 4)))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))


def photo(rng, shape: str, width: int, height: int) -> Image.Image:
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.18, 0.38) * min(width, height)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r / 3)))
    else:
        draw.polygon(outline(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    return image


def write_photo_folder(folder: str, count: int, classes: int = 5, sizes=(100, 260), seed: int = 0,
                       quality: int = 90) -> str:
    """Writes `count` JPEG photos, `classes` classes (SHAPES' first names), sides drawn from `sizes`;
    idempotent for the same arguments (an existing folder with that many files is left as it is)."""
    names = SHAPES[:classes]
    existing = sum(len(files) for _, _, files in os.walk(folder)) if os.path.isdir(folder) else 0
    if existing == count:
        return folder
    rng = np.random.default_rng(seed)
    for name in names:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for i in range(count):
        name = names[i % classes]
        width, height = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        path = os.path.join(folder, name, f"{i:06d}.jpg")
        photo(rng, name, width, height).save(path + ".tmp", "JPEG", quality=quality)
        os.replace(path + ".tmp", path)
    return folder
