"""A suite of colour photo folders, each hard in a different way, generated from what the installed packages
ship (scikit-learn's sample photographs, matplotlib's sample images) plus drawn objects and textures; no network.

The defaults of models/ and pipeline/ are judged on these folders against keras-io's recipe
(benchmarks/image_bench.py --suite); no unit test reads them, so nothing is tuned to one of them.

    objects       shapes of random colours on crops of real photographs (5 classes)
    textures      six textures (stripes, checks, dots, waves, ...) of random colours and scales over photo crops
    colours       one shape on photo crops; the class is only its hue (5 classes)
    fine_grained  one card on photo crops; the class is a small mark on it (4 classes)
    imbalanced    objects with 200 / 100 / 50 / 20 images per class (10x)
    small         objects with 30 images per class
    many          20 classes: 10 shapes, filled or outlined
    photo_crops   crops of 8 regions of real photographs at mixed sizes and aspect ratios, with grey, PNG and
                  upper-case .JPG files among them
"""
import glob
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES10 = ("circle", "square", "triangle", "star", "cross", "diamond", "pentagon", "hexagon", "arrow", "bar")
HUES = {"red": 0.0, "yellow": 0.16, "green": 0.33, "blue": 0.62, "purple": 0.8}
MARKS = ("plain", "dot", "slash", "notch")
TEXTURES = ("stripes", "checks", "dots", "waves", "diagonal", "rings")


def source_photos() -> list:
    """The real photographs the installed packages ship, as RGB arrays (at least scikit-learn's two)."""
    import sklearn.datasets

    photos = list(sklearn.datasets.load_sample_images().images)
    try:
        import matplotlib

        sample = os.path.join(matplotlib.get_data_path(), "sample_data")
        for path in sorted(glob.glob(os.path.join(sample, "*.jpg")) + glob.glob(os.path.join(sample, "*.png"))):
            image = Image.open(path).convert("RGB")
            if min(image.size) >= 200:
                photos.append(np.asarray(image))
    except ImportError:
        pass
    return photos


def _crop(rng, photos, width: int, height: int, photo_index=None, region=None) -> Image.Image:
    """A random crop of a real photograph (flipped half the time), resized to width x height."""
    source = photos[rng.integers(len(photos)) if photo_index is None else photo_index]
    h, w = source.shape[:2]
    side = int(rng.uniform(0.25, 0.6) * min(h, w))
    cw, ch = (side, int(side * height / width)) if width >= height else (int(side * width / height), side)
    cw, ch = min(cw, w), min(ch, h)
    if region is None:
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    else:  # a crop near one region's centre (fractions of the photo)
        x = int(np.clip(region[0] * w - cw / 2 + rng.normal(0, 0.03 * w), 0, w - cw))
        y = int(np.clip(region[1] * h - ch / 2 + rng.normal(0, 0.03 * h), 0, h - ch))
    image = Image.fromarray(source[y:y + ch, x:x + cw]).resize((width, height), Image.BILINEAR)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def outline(shape: str, cx: float, cy: float, r: float, angle: float):
    """The polygon of `shape` (SHAPES10) of radius r at (cx, cy), turned by `angle`; None for a circle."""
    def turn(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    def regular(n):
        return turn([(r * math.cos(2 * math.pi * i / n - math.pi / 2), r * math.sin(2 * math.pi * i / n - math.pi / 2))
                     for i in range(n)])

    if shape == "circle":
        return None
    if shape == "square":
        return turn([(-r, -r), (r, -r), (r, r), (-r, r)])
    if shape == "triangle":
        return regular(3)
    if shape == "pentagon":
        return regular(5)
    if shape == "hexagon":
        return regular(6)
    if shape == "diamond":
        return turn([(0, -1.3 * r), (0.7 * r, 0), (0, 1.3 * r), (-0.7 * r, 0)])
    if shape == "star":
        return turn([((r if i % 2 == 0 else 0.45 * r) * math.cos(i * math.pi / 5 - math.pi / 2),
                      (r if i % 2 == 0 else 0.45 * r) * math.sin(i * math.pi / 5 - math.pi / 2)) for i in range(10)])
    if shape == "cross":
        w = 0.35 * r
        return turn([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                     (-r, -w), (-w, -w)])
    if shape == "arrow":
        return turn([(-r, -0.25 * r), (0.2 * r, -0.25 * r), (0.2 * r, -0.7 * r), (r, 0), (0.2 * r, 0.7 * r),
                     (0.2 * r, 0.25 * r), (-r, 0.25 * r)])
    if shape == "bar":
        return turn([(-r, -0.3 * r), (r, -0.3 * r), (r, 0.3 * r), (-r, 0.3 * r)])
    raise ValueError(shape)


def _draw(image: Image.Image, rng, shape: str, colour, filled: bool = True, scale=(0.2, 0.38)) -> tuple:
    width, height = image.size
    r = rng.uniform(*scale) * min(width, height)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    draw = ImageDraw.Draw(image)
    points = outline(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
    line = max(2, int(r / 4))
    if points is None:
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=colour) if filled else draw.ellipse(box, outline=colour, width=line)
    elif filled:
        draw.polygon(points, fill=colour)
    else:
        draw.line(points + points[:1], fill=colour, width=line, joint="curve")
    return cx, cy, r


def _random_colour(rng) -> tuple:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _hue_colour(rng, hue: float) -> tuple:
    import colorsys

    h = (hue + rng.normal(0, 0.025)) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0)))


def _texture(rng, kind: str, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6, 16) * min(width, height) / 100
    angle = rng.uniform(-0.3, 0.3)
    u, v = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    u, v = u + rng.uniform(0, period), v + rng.uniform(0, period)
    if kind == "stripes":
        mask = (u // period) % 2
    elif kind == "diagonal":
        mask = ((u + v) / 1.414 // period) % 2
    elif kind == "checks":
        mask = ((u // period) + (v // period)) % 2
    elif kind == "dots":
        mask = (((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (period / 3.5) ** 2)
    elif kind == "waves":
        mask = (np.sin(2 * math.pi * u / period + 2 * np.sin(2 * math.pi * v / (3 * period))) > 0)
    elif kind == "rings":
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        mask = (np.sqrt((x - cx) ** 2 + (y - cy) ** 2) // period) % 2
    else:
        raise ValueError(kind)
    return mask.astype(np.float32)


def _save(image: Image.Image, path: str) -> None:
    kind = "PNG" if path.lower().endswith(".png") else "JPEG"
    image.save(path + ".tmp", kind, **({"quality": 90} if kind == "JPEG" else {}))
    os.replace(path + ".tmp", path)


def _sizes(rng, low: int = 80, high: int = 200) -> tuple:
    return tuple(int(v) for v in rng.integers(low, high + 1, 2))


def _objects(rng, photos, label, count_index):
    width, height = _sizes(rng)
    image = _crop(rng, photos, width, height)
    _draw(image, rng, label, _random_colour(rng))
    return image


def _write(folder: str, counts: dict, make, seed: int) -> str:
    """`counts`: class name → images; make(rng, class name, i) → PIL image or (image, file extension)."""
    if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == sum(counts.values()):
        return folder
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(count):
            made = make(rng, name, i)
            image, extension = made if isinstance(made, tuple) else (made, ".jpg")
            _save(image, os.path.join(folder, name, f"{i:05d}{extension}"))
    return folder


def objects(folder, per_class=120, seed=1, shapes=SHAPES10[:5]):
    photos = source_photos()
    return _write(folder, {s: per_class for s in shapes}, lambda rng, s, i: _objects(rng, photos, s, i), seed)


def textures(folder, per_class=100, seed=2):
    photos = source_photos()

    def make(rng, kind, i):
        width, height = _sizes(rng)
        base = np.asarray(_crop(rng, photos, width, height), np.float32)
        mask = _texture(rng, kind, width, height)[..., None]
        colour = np.array(_random_colour(rng), np.float32)
        alpha = rng.uniform(0.45, 0.8)
        mixed = base * (1 - alpha * mask) + colour * alpha * mask
        return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))

    return _write(folder, {k: per_class for k in TEXTURES}, make, seed)


def colours(folder, per_class=100, seed=3):
    photos = source_photos()

    def make(rng, hue_name, i):
        width, height = _sizes(rng)
        image = _crop(rng, photos, width, height)
        _draw(image, rng, "circle", _hue_colour(rng, HUES[hue_name]), scale=(0.15, 0.3))
        return image

    return _write(folder, {h: per_class for h in HUES}, make, seed)


def fine_grained(folder, per_class=120, seed=4):
    photos = source_photos()

    def make(rng, mark, i):
        width, height = _sizes(rng)
        image = _crop(rng, photos, width, height)
        card = tuple(int(c) for c in rng.integers(170, 256, 3))
        cx, cy, r = _draw(image, rng, "square", card, scale=(0.28, 0.4))
        ink = tuple(int(c) for c in rng.integers(0, 70, 3))
        draw, m = ImageDraw.Draw(image), 0.3 * r  # the mark: about a tenth of the card's side
        mx, my = cx + rng.uniform(-0.3, 0.3) * r, cy + rng.uniform(-0.3, 0.3) * r
        if mark == "dot":
            draw.ellipse([mx - m / 2, my - m / 2, mx + m / 2, my + m / 2], fill=ink)
        elif mark == "slash":
            draw.line([mx - m / 2, my + m / 2, mx + m / 2, my - m / 2], fill=ink, width=max(2, int(m / 4)))
        elif mark == "notch":
            draw.polygon([(mx - m / 2, my + m / 2), (mx, my - m / 2), (mx + m / 2, my + m / 2)], fill=ink)
        return image

    return _write(folder, {m: per_class for m in MARKS}, make, seed)


def imbalanced(folder, seed=5):
    photos = source_photos()
    counts = dict(zip(SHAPES10[:4], (200, 100, 50, 20)))
    return _write(folder, counts, lambda rng, s, i: _objects(rng, photos, s, i), seed)


def small(folder, per_class=30, seed=6):
    photos = source_photos()
    return _write(folder, {s: per_class for s in SHAPES10[:5]}, lambda rng, s, i: _objects(rng, photos, s, i), seed)


def many(folder, per_class=40, seed=7):
    photos = source_photos()
    names = [f"{shape}_{style}" for shape in SHAPES10 for style in ("filled", "outlined")]

    def make(rng, name, i):
        shape, style = name.split("_")
        width, height = _sizes(rng)
        image = _crop(rng, photos, width, height)
        _draw(image, rng, shape, _random_colour(rng), filled=style == "filled")
        return image

    return _write(folder, {n: per_class for n in names}, make, seed)


def photo_crops(folder, per_class=100, seed=8):
    """8 classes: each a region of one of the real photographs, cropped at mixed sizes and aspect ratios."""
    photos = source_photos()
    regions = [(p, (fx, fy)) for p in range(2) for fx, fy in ((0.25, 0.3), (0.75, 0.3), (0.25, 0.75), (0.75, 0.75))]
    names = [f"{'china' if p == 0 else 'flower'}_{'top' if fy < 0.5 else 'bottom'}_{'left' if fx < 0.5 else 'right'}"
             for p, (fx, fy) in regions]

    def make(rng, name, i):
        p, region = regions[names.index(name)]
        width = int(rng.integers(80, 260))
        height = int(np.clip(width * rng.choice([0.5, 0.75, 1.0, 1.33, 2.0]), 60, 300))
        image = _crop(rng, photos, width, height, photo_index=p, region=region)
        if i % 25 == 3:
            image = image.convert("L")
        extension = ".png" if i % 10 == 5 else (".JPG" if i % 50 == 7 else ".jpg")
        return image, extension

    return _write(folder, {n: per_class for n in names}, make, seed)


SUITE = {"objects": objects, "textures": textures, "colours": colours, "fine_grained": fine_grained,
         "imbalanced": imbalanced, "small": small, "many": many, "photo_crops": photo_crops}


def write_suite(work: str, names=None) -> dict:
    """name → folder, each generated under `work` (idempotent)."""
    return {name: SUITE[name](os.path.join(work, name)) for name in (names or SUITE)}
