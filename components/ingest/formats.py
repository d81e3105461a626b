"""Turning image files into canonical tf.Examples, and finding out what a data folder holds.

Every example the pipeline sees downstream has the same three features, whatever came in:
  image       bytes, one encoded image: a PNG/JPEG/GIF/BMP file's own bytes, or PNG for numeric
              sources (IDX, raw bytes, int or float lists), encoded once, losslessly
  label       int64 class index in 0..num_classes-1
  class_name  bytes, the label's name (the Evaluator slices on it)
Decoding and resizing to the image shape happen in the graph (models/preprocessing.py).

`probe` reads the whole latest span before anything runs and decides, out loud, what the data is:
format, image shape, the class set, the numeric pixel range, and what is left out. Every problem it
finds is a DataError naming the file (and record) and the fix.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import os
import re
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from models.data import DataError  # noqa: F401  (raised here; the CLI maps it to exit 2)
from models.contract import CLASS_NAME_KEY, IMAGE_KEY, LABEL_KEY, MAX_IMAGE_PIXELS

MAX_LISTED = 10  # files or records named in one message
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr", ".gz")
_SPAN_DIR = re.compile(r"^span-(\d+)$")
# Numeric pixel ranges the probe recognises, tightest first; data outside all of them keeps its own range.
KNOWN_RANGES = ((0.0, 1.0), (-0.5, 0.5), (-1.0, 1.0), (0.0, 255.0))

Shape = Tuple[int, int, int]
Range = Tuple[float, float]


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 pixels [H, W] or [H, W, C] (C 1 or 3) as PNG bytes (lossless)."""
    pixels = np.asarray(pixels, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def to_example(image, label: int, class_names: Optional[Sequence[str]] = None) -> tf.train.Example:
    """A canonical example of an encoded image (bytes) or of uint8 pixels (encoded as PNG); `class_names`
    adds the label's name."""
    data = image if isinstance(image, bytes) else encode_png(image)
    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    if class_names is not None:
        feature[CLASS_NAME_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[class_names[int(label)].encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _header(source, max_pixels: int, where: str) -> Shape:
    """(H, W, C) from an image's header (C is 1 for grey modes, else 3), without decoding it; a DataError
    when it is not an image or declares more than `max_pixels` pixels."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            height, width, mode = image.height, image.width, image.mode
    except Image.DecompressionBombError as e:  # PIL's own bound, above ours by default
        declared = re.search(r"\((\d+) pixels\)", str(e))
        raise DataError(f"{where}: its header declares {declared.group(1) if declared else 'too many'} pixels, over "
                        f"the limit of {max_pixels} pixels per image (--max-image-pixels). Remove or shrink the "
                        "file, or pass --skip-bad-files to leave it out.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: not a readable image ({e}). Remove or replace the file.") from e
    if height * width > max_pixels:
        raise DataError(f"{where}: {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels "
                        "per image (--max-image-pixels). Remove or shrink the file, raise the limit, or pass "
                        "--skip-bad-files to leave it out.")
    return height, width, 1 if mode in ("1", "L", "LA", "I", "I;16", "P") else 3


def check_image(data: bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """The encoded image as the graph will decode it: its own bytes when TensorFlow decodes them, else (a
    mode TensorFlow does not read, such as CMYK JPEG) re-encoded once as PNG. A DataError for an image over
    `max_pixels` (from its header, before decoding) or one whose body does not decode."""
    _header(data, max_pixels, where)
    try:
        tf.io.decode_image(data, channels=0, expand_animations=False)
        return data
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        pass
    try:
        with Image.open(io.BytesIO(data)) as image:
            return encode_png(np.asarray(image.convert("L" if image.mode in ("1", "L", "I", "I;16") else "RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: not a readable PNG/JPEG image ({e}). Remove or replace the file.") from e


def to_uint8(values: np.ndarray, pixel_range: Range) -> np.ndarray:
    """Numeric pixel values in `pixel_range` (decided once for the whole span) → 0..255."""
    low, high = pixel_range
    return np.clip(np.rint((np.asarray(values, np.float64) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _read(path: str) -> bytes:
    """The file's bytes; a file that cannot be read (a symlink loop, no permission) is a DataError naming it."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.OpError as e:
        raise DataError(f"{path}: cannot be read ({e.message.splitlines()[0] if e.message else type(e).__name__})"
                        ". Remove or fix it, or pass --skip-bad-files to leave it out.") from None
    return gzip.decompress(data) if path.endswith(".gz") else data


# ----------------------------------------------------------------------------- reading one file or record
def read_image_file(path: str, class_names: Sequence[str],
                    max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Tuple[bytes, int]]:
    """One (encoded image, label) from `<class>/<file>`; files that are not images (by extension) yield nothing."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return
    class_name = os.path.basename(os.path.dirname(path))
    if class_name not in class_names:
        raise DataError(f"{path}: class folder '{class_name}' is not one of the classes {list(class_names)} "
                        "(the latest span's folders). Remove it, or add the class to the latest span.")
    yield check_image(_read(path), path, max_pixels), list(class_names).index(class_name)


def _idx_array(path: str, expected_dims: int) -> np.ndarray:
    data = _read(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file.")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or dims != expected_dims:
        raise DataError(f"{path}: not an unsigned-byte IDX file with {expected_dims} dimensions "
                        f"(header {data[:4].hex()}).")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes; the file is truncated.")
    return body.reshape(shape)


def idx_labels_path(images_path: str) -> str:
    return images_path.replace("images", "labels").replace("idx3", "idx1")


def _idx_pair(images_path: str) -> Tuple[np.ndarray, np.ndarray]:
    labels_path = idx_labels_path(images_path)
    if not tf.io.gfile.exists(labels_path):
        raise DataError(f"{images_path}: no labels file {labels_path} beside it.")
    images, labels = _idx_array(images_path, 3), _idx_array(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels.")
    return images, labels


def read_idx_file(images_path: str, num_classes: int) -> Iterator[Tuple[bytes, int]]:
    """(PNG of the image, label) of every image in an IDX file (its unsigned bytes are 0..255 pixels)."""
    images, labels = _idx_pair(images_path)
    for index, (pixels, label) in enumerate(zip(images, labels)):
        if not 0 <= label < num_classes:
            raise DataError(f"{images_path} image {index}: label {label} is outside the classes 0..{num_classes - 1}.")
        yield encode_png(pixels), int(label)


def _is_encoded_image(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff"


def _features(example: tf.train.Example, image_feature: str, label_feature: str, where: str):
    features = example.features.feature
    for name, flag in ((image_feature, "--image-feature"), (label_feature, "--label-feature")):
        if name not in features:
            raise DataError(f"{where}: no feature '{name}' (this record has {sorted(features)}). Fix or remove the "
                            f"record; if no record has it, name the feature with {flag}.")
    return features[image_feature], features[label_feature]


def _label(label: tf.train.Feature, label_feature: str, where: str):
    """The raw label of one record: an int, or a str for bytes labels."""
    values = label.int64_list.value or label.bytes_list.value
    if len(values) != 1:
        raise DataError(f"{where}: feature '{label_feature}' holds {len(values)} values, not one class label "
                        "(an integer index or a class name). Fix or remove the record.")
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else int(value)


def parse_record(record: bytes, image_feature: str, label_feature: str, shape: Shape,
                 class_names: Sequence[str], where: str = "a record", pixel_range: Optional[Range] = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> Tuple[bytes, int]:
    """The encoded image and label (an index into `class_names`) of one serialized tf.Example.

    An encoded image is kept as it is; raw uint8 bytes (H*W*C of `shape`) and int or float lists
    (mapped from `pixel_range`, the span's decided range) are encoded once as PNG."""
    image, label = _features(tf.train.Example.FromString(record), image_feature, label_feature, where)
    size = int(np.prod(shape))
    if image.bytes_list.value:
        data = image.bytes_list.value[0]
        if _is_encoded_image(data):
            encoded = check_image(data, f"{where}, feature '{image_feature}'", max_pixels)
        elif len(data) == size:
            encoded = encode_png(np.frombuffer(data, dtype=np.uint8).reshape(shape))
        else:
            raise DataError(f"{where}: feature '{image_feature}' holds {len(data)} raw bytes, not the {size} of "
                            f"image shape {shape}. Pass the right --image-shape.")
    else:
        values = np.asarray(image.float_list.value or image.int64_list.value)
        if values.size != size:
            raise DataError(f"{where}: feature '{image_feature}' holds {values.size} values, not the {size} of "
                            f"image shape {shape}. Pass the right --image-shape.")
        if pixel_range is None:
            raise DataError(f"{where}: numeric pixels but no pixel range was decided; probe the data first.")
        low, high = pixel_range
        if values.min() < low or values.max() > high:
            raise DataError(f"{where}: pixel values {values.min():g}..{values.max():g} are outside the pixel range "
                            f"{low:g}..{high:g} decided for this span. Fix the record, or pass --pixel-range.")
        encoded = encode_png(to_uint8(values, pixel_range).reshape(shape))
    value = _label(label, label_feature, where)
    if isinstance(value, str):
        if value not in class_names:
            raise DataError(f"{where}: label '{value}' is not one of the classes {list(class_names)}.")
        value = list(class_names).index(value)
    elif not 0 <= value < len(class_names):
        raise DataError(f"{where}: label {value} is outside the classes 0..{len(class_names) - 1}.")
    return encoded, value


# ----------------------------------------------------------------------------- probing a data folder
def _latest_span(path: str) -> Tuple[str, str, int]:
    """Returns (prefix of the input pattern, folder of the latest span, its number; 0 without spans)."""
    spans = [(int(m.group(1)), name) for name in tf.io.gfile.listdir(path)
             if (m := _SPAN_DIR.match(name.rstrip("/")))]
    if not spans:
        return "", path, 0
    return "span-{SPAN}/", os.path.join(path, max(spans)[1].rstrip("/")), max(spans)[0]


def _listdir(folder: str) -> List[str]:
    """tf.io.gfile.listdir, with a DataError naming a file name that is not UTF-8 (TensorFlow cannot list, glob
    or open such a folder, so it cannot be left out either)."""
    try:
        return tf.io.gfile.listdir(folder)
    except UnicodeDecodeError:
        names = [n for n in os.listdir(os.fsencode(folder)) if not _utf8(n)]
        raise DataError(f"{folder}: {len(names)} file name{'s' if len(names) > 1 else ''} that {'are' if len(names) > 1 else 'is'} "
                        f"not UTF-8 ({', '.join(repr(n)[2:-1] for n in names[:MAX_LISTED])}): TensorFlow cannot read "
                        "such a folder; rename them (e.g. `convmv -f latin1 -t utf8 --notest`).") from None


def _size(path: str) -> int:
    """Bytes of `path`; -1 for one that cannot be looked at (a symlink loop, a broken link)."""
    try:
        return tf.io.gfile.stat(path).length
    except tf.errors.OpError:
        return -1


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _files(folder: str) -> List[str]:
    """The files in `folder` (listed, not globbed: a name may hold glob characters, as `cats[1]`)."""
    paths = (os.path.join(folder, name) for name in _listdir(folder))
    return sorted(p for p in paths if not tf.io.gfile.isdir(p))


def _subfolders(folder: str) -> List[str]:
    return sorted(name.rstrip("/") for name in _listdir(folder)
                  if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(folder, name)))


def detect_format(folder: str) -> str:
    files = [os.path.basename(f) for f in _files(folder)]
    if any("idx3-ubyte" in f for f in files):
        return "idx"
    if any(f.endswith(TFRECORD_EXTENSIONS) for f in files):
        return "tfrecord"
    if _subfolders(folder):
        return "images"
    raise DataError(f"{folder}: found no data. Expected one sub-folder per class holding PNG/JPEG images, "
                    "MNIST-format IDX files (train-images-idx3-ubyte[.gz] and its labels), or TFRecord "
                    "files of tf.Example (*.tfrecord).")


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What a data folder holds, as found by `probe` (or as stated, for data that cannot be read here)."""

    path: str
    format: str
    input_pattern: str  # relative to `path`; `{SPAN}` when spans exist
    image_shape: Shape
    class_names: Tuple[str, ...]  # index i is label i; integer labels without names are named by their digits
    image_feature: str = IMAGE_KEY  # TFRecords: the feature names in the user's records
    label_feature: str = LABEL_KEY
    span: int = 0  # the latest span's number (0: no span folders)
    num_files: int = 0  # in the latest span
    num_bytes: int = 0  # in the latest span
    class_counts: Tuple[int, ...] = ()  # examples per class in the latest span (empty: not counted)
    resized: int = 0  # images of another size or colour mode than image_shape, converted on the way in
    skipped: Tuple[str, ...] = ()  # "file: why" for each file or record left out
    shape_source: str = ""  # how image_shape was decided
    class_source: str = ""  # where the class set comes from
    decisions: Tuple[str, ...] = ()  # other decisions: empty classes, files left out
    skip_bad_files: bool = False  # unreadable files and records are left out rather than an error
    pixel_range: Optional[Range] = None  # numeric pixels (int/float lists): the values that map to 0..255
    range_source: str = ""  # how pixel_range was decided
    max_image_pixels: int = MAX_IMAGE_PIXELS  # width × height bound of one image, checked before decoding

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def example_gen_config(self) -> dict:
        """The ExampleGen executor's custom_config: how to read the files."""
        return {"format": self.format, "image_shape": list(self.image_shape), "class_names": list(self.class_names),
                "image_feature": self.image_feature, "label_feature": self.label_feature,
                "skip_bad_files": self.skip_bad_files, "max_image_pixels": self.max_image_pixels,
                "pixel_range": list(self.pixel_range) if self.pixel_range else None}

    def describe(self) -> str:
        """What was found and decided, for the user to read before training starts."""
        height, width, channels = self.image_shape
        lines = [f"data: {self.path} ({self.format}" + (f", span {self.span}" if self.span else "")
                 + f", {self.num_files} files, {self.num_bytes / 2**20:.1f} MB)",
                 f"  image shape {height}x{width}x{channels}" + (f" ({self.shape_source})" if self.shape_source else "")
                 + (f"; {self.resized} images resized or converted to it" if self.resized else "")]
        if self.pixel_range:
            low, high = self.pixel_range
            shift = "v" if low == 0 else f"(v {'-' if low > 0 else '+'} {abs(low):g})"
            lines.append(f"  pixel values {low:g}..{high:g} ({self.range_source}); stored as 0..255 = "
                         f"{shift} * {255 / (high - low):g}")
        source = f" ({self.class_source})" if self.class_source else ""
        if self.class_counts:
            lines.append(f"  {self.num_classes} classes{source}, {sum(self.class_counts)} examples: " + ", ".join(
                f"{name} ({count})" for name, count in zip(self.class_names, self.class_counts)))
        else:
            lines.append(f"  {self.num_classes} classes{source}: {', '.join(self.class_names)}")
        lines += [f"  {d}" for d in self.decisions]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} files or records left out:")
            lines += [f"    {s}" for s in self.skipped[:MAX_LISTED]]
            if len(self.skipped) > MAX_LISTED:
                lines.append(f"    ... and {len(self.skipped) - MAX_LISTED} more")
        return "\n".join(lines)


@dataclasses.dataclass
class _Scan:
    """What one pass over the latest span found."""

    files: List[str]
    pattern: str
    labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # raw label → count
    first_seen: dict = dataclasses.field(default_factory=dict)  # raw label → where it first appears
    shapes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (H, W, C) of images
    sizes: dict = dataclasses.field(default_factory=dict)  # raw pixel values per record → where first seen
    low: Optional[Tuple[float, str]] = None  # numeric (int/float list) pixels: the smallest value, where
    high: Optional[Tuple[float, str]] = None  # ... and the largest
    floats: bool = False  # some numeric pixels are floats
    bad: List[str] = dataclasses.field(default_factory=list)  # "where: why" of unreadable files or records
    skipped: List[str] = dataclasses.field(default_factory=list)  # "where: why" of files that are not data

    def add(self, label, where: str) -> None:
        self.labels[label] += 1
        self.first_seen.setdefault(label, where)

    def add_values(self, values: np.ndarray, floats: bool, where: str) -> None:
        if values.size:
            self.floats |= floats
            if self.low is None or values.min() < self.low[0]:
                self.low = (float(values.min()), where)
            if self.high is None or values.max() > self.high[0]:
                self.high = (float(values.max()), where)


def _scan_images(folder: str, prefix: str, max_pixels: int) -> _Scan:
    scan = _Scan(files=[], pattern=prefix + "*/*")
    scan.skipped += [f"{f}: not in a class folder" for f in _files(folder)
                     if not os.path.basename(f).startswith(".")]
    for name in _subfolders(folder):
        files = [f for f in _files(os.path.join(folder, name)) if not os.path.basename(f).startswith(".")]
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        scan.skipped += [f"{f}: not an image file (PNG/JPEG/BMP/GIF by its extension)" for f in files
                         if f not in images]
        if not images:
            raise DataError(f"class folder '{name}' ({os.path.join(folder, name)}) holds no images"
                            + (f" (only {len(files)} other files)" if files else "")
                            + ". Add its images, or remove the folder.")
        scan.files += images
        for path in images:
            try:
                scan.shapes[_header(path if "://" not in path else _read(path), max_pixels, path)] += 1
            except DataError as e:
                scan.bad.append(str(e).split(". Remove")[0])
                continue
            scan.add(name, path)
    return scan


def _scan_idx(folder: str, prefix: str) -> _Scan:
    images = [f for f in _files(folder) if "idx3-ubyte" in f]
    if not images:
        raise DataError(f"{folder}: no IDX image files (*-images-idx3-ubyte[.gz]).")
    scan = _Scan(files=images, pattern=prefix + "*idx3-ubyte*")
    for path in images:
        pixels, labels = _idx_pair(path)
        scan.shapes[(*pixels.shape[1:], 1)] += len(pixels)
        for index, label in enumerate(labels.tolist()):
            scan.add(label, f"{path} image {index}")
    return scan


def _scan_tfrecords(folder: str, prefix: str, image_feature: str, label_feature: str, max_pixels: int) -> _Scan:
    files = [f for f in _files(folder) if f.endswith(TFRECORD_EXTENSIONS)]
    if not files:
        raise DataError(f"{folder}: no TFRecord files (*.tfrecord, *.tfrecords, *.gz).")
    scan = _Scan(files=files, pattern=prefix + "*")
    for path in files:
        records = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")
        try:
            for index, record in enumerate(records.as_numpy_iterator()):
                where = f"{path} record {index}"
                try:
                    image, label = _features(tf.train.Example.FromString(record), image_feature, label_feature, where)
                    data = image.bytes_list.value[0] if image.bytes_list.value else None
                    if data is not None and _is_encoded_image(data):
                        scan.shapes[_header(data, max_pixels, where)] += 1
                    elif data is not None:
                        scan.sizes.setdefault(len(data), where)
                    else:
                        values = np.asarray(image.float_list.value or image.int64_list.value)
                        scan.sizes.setdefault(values.size, where)
                        scan.add_values(values, bool(image.float_list.value), where)
                    scan.add(_label(label, label_feature, where), where)
                except DataError as e:
                    scan.bad.append(str(e).split(". Remove")[0])
        except tf.errors.DataLossError as e:
            scan.bad.append(f"{path}: not a complete TFRecord file ({e.message.splitlines()[0]})")
    return scan


MIXED_SIDE_MAX = 128  # the default side for photos of many sizes: training cost grows with its square


def _decide_shape(scan: _Scan, stated: Optional[Shape]) -> Tuple[Shape, int, str]:
    """(shape, how many images differ from it, how it was decided)."""
    if not scan.shapes and not scan.sizes:
        raise DataError("found no readable images or records in the latest span.")
    if stated is not None:  # raw pixels cannot be resized: their count must fit
        wrong = {size: where for size, where in scan.sizes.items() if size != int(np.prod(stated))}
        if wrong:
            size, where = next(iter(wrong.items()))
            raise DataError(f"{where}: {size} raw pixel values, not the {int(np.prod(stated))} of --image-shape "
                            f"{'x'.join(map(str, stated))} (raw pixels cannot be resized). Fix the record or the shape.")
    elif scan.sizes:  # raw pixel values: the shape comes from their count
        if len(scan.sizes) > 1 or scan.shapes:
            raise DataError(f"the records hold raw images of {len(scan.sizes)} sizes ({sorted(scan.sizes)[:MAX_LISTED]} "
                            "values)" + (" and encoded images" if scan.shapes else "") + "; raw pixels cannot be "
                            "resized. Pass --image-shape H,W,C and fix the records that do not fit it.")
        size = next(iter(scan.sizes))
        for channels in (1, 3):
            side = int(round(np.sqrt(size / channels)))
            if side * side * channels == size:
                return (side, side, channels), 0, (
                    f"inferred from {size} raw values per image, a square {'grey' if channels == 1 else 'RGB'} "
                    "image; pass --image-shape H,W,C if that is wrong")
        raise DataError(f"the records hold {size} raw values per image, which is not a square grey or RGB image. "
                        "Pass --image-shape H,W,C.")
    if stated is not None:
        differ = sum(scan.shapes.values()) - scan.shapes.get(stated, 0)
        return stated, differ, "from --image-shape"
    (shape, count), total = scan.shapes.most_common(1)[0], sum(scan.shapes.values())
    differ = total - count
    if len(scan.shapes) == 1:
        return shape, 0, "every image has it"
    if 2 * count >= total:
        return shape, differ, (f"the most common of {len(scan.shapes)} sizes, {count} of {total} images; pass "
                               "--image-shape H,W,C to choose another")
    # Photos of many sizes: a square a person would choose, from the median shorter side (a multiple of 32
    # from 32 px up), at most MIXED_SIDE_MAX; colour if any image has colour.
    shorter = np.repeat([min(h, w) for h, w, _ in scan.shapes], list(scan.shapes.values()))
    median = int(np.median(shorter))
    side = min(MIXED_SIDE_MAX, median if median < 32 else median // 32 * 32)
    channels = 3 if any(c == 3 for _, _, c in scan.shapes) else 1
    shape = (side, side, channels)
    return shape, total - scan.shapes.get(shape, 0), (
        f"{len(scan.shapes)} sizes, the most common only {count} of {total} images: a square from the median "
        f"shorter side ({median} px){f', at most {MIXED_SIDE_MAX}' if median > MIXED_SIDE_MAX else ''}; pass "
        "--image-shape H,W,C to choose another")


def _decide_range(scan: _Scan, stated: Optional[Range]) -> Tuple[Optional[Range], str]:
    """(the pixel range of numeric pixels, how it was decided): one rule for the whole span, never per record.
    The tightest of KNOWN_RANGES that holds every value, else the values' own range; `stated` wins."""
    if scan.low is None:
        return None, ""
    (low, low_where), (high, high_where) = scan.low, scan.high
    kind = "floats" if scan.floats else "integers"
    if stated is not None:
        if low < stated[0] or high > stated[1]:
            where = low_where if low < stated[0] else high_where
            raise DataError(f"--pixel-range {stated[0]:g},{stated[1]:g} does not hold every pixel value: the span's "
                            f"{kind} run {low:g}..{high:g} (e.g. {where}). Pass a range that holds them all.")
        return tuple(stated), "from --pixel-range"
    seen = f"the whole span's {kind} run {low:g}..{high:g}"
    for known in KNOWN_RANGES:
        if known[0] <= low and high <= known[1]:
            return known, f"{seen}; pass --pixel-range LO,HI to override"
    if high == low:
        raise DataError(f"every pixel value in the span is {low:g} ({low_where}); there is nothing to learn. "
                        "Pass --pixel-range LO,HI if the images are meant to be blank.")
    return (low, high), f"{seen}, not one of the usual ranges, so that range itself; pass --pixel-range LO,HI to override"


def _decide_classes(scan: _Scan, spec, fmt: str) -> Tuple[Tuple[str, ...], Tuple[int, ...], str]:
    """(class names, examples per class, where they come from); a label outside the class set is a DataError."""
    observed = scan.labels
    if fmt == "images" or all(isinstance(k, str) for k in observed):
        found = sorted(observed) if fmt != "images" else sorted(
            {os.path.basename(os.path.dirname(f)) for f in scan.files})
        names = list(spec.class_names or found)
        strays = sorted(set(observed) - set(names))
        if strays:
            raise DataError(f"labels {strays} (first: {scan.first_seen[strays[0]]}) are not among --class-names "
                            f"{names}. Add them to --class-names, or fix or remove those examples.")
        if spec.num_classes is not None and spec.num_classes != len(names):
            raise DataError(f"--num-classes {spec.num_classes} but the data has {len(names)} classes {names}.")
        source = ("from --class-names" if spec.class_names else "the folder names" if fmt == "images"
                  else "the label names, sorted")
        return tuple(names), tuple(observed.get(n, 0) for n in names), source
    if any(isinstance(k, str) for k in observed):
        raise DataError(f"the labels mix integers and names (e.g. {scan.first_seen[next(k for k in observed if isinstance(k, str))]}). "
                        "Use one kind in every record.")
    if spec.class_names and spec.num_classes is not None and len(spec.class_names) != spec.num_classes:
        raise DataError(f"--num-classes {spec.num_classes} but {len(spec.class_names)} --class-names.")
    if spec.class_names or spec.num_classes is not None:
        count = len(spec.class_names) if spec.class_names else spec.num_classes
        source = "from --class-names" if spec.class_names else "from --num-classes, named by their digits"
    else:
        count = max(observed) + 1
        if sorted(observed) != list(range(count)):
            missing = [i for i in range(count) if i not in observed]
            raise DataError(
                f"the integer labels are not contiguous from 0: found {len(observed)} distinct labels in "
                f"0..{count - 1}, {len(missing)} missing ({missing[:MAX_LISTED]}); the rarest: " + ", ".join(
                    f"{k} ({observed[k]} examples, first: {scan.first_seen[k]})" for k in sorted(observed, key=observed.get)[:3])
                + ". Pass --num-classes N (every label must be in 0..N-1) or --class-names, or fix the stray labels.")
        source = (f"inferred from the integer labels 0..{count - 1}, which are contiguous; named by their digits, "
                  "pass --class-names to name them")
    outside = sorted(k for k in observed if not 0 <= k < count)
    if outside:
        raise DataError(f"label {outside[0]} ({observed[outside[0]]} examples, first: {scan.first_seen[outside[0]]})"
                        + (f" and {len(outside) - 1} more labels" if len(outside) > 1 else "")
                        + f" outside the {count} classes 0..{count - 1}. Fix or remove those examples, or pass "
                          "the right --num-classes / --class-names.")
    names = tuple(spec.class_names) if spec.class_names else tuple(str(i) for i in range(count))
    return names, tuple(observed.get(i, 0) for i in range(count)), source


def probe(spec) -> DataFacts:
    """Reads the latest span of `spec`'s data (a pipeline.config.DataSpec) and decides what it is;
    what the spec states wins. Raises DataError for every problem, naming the file or record."""
    if not tf.io.gfile.isdir(spec.path):
        raise DataError(f"--data {spec.path}: no such folder.")
    prefix, folder, span = _latest_span(spec.path)
    fmt = detect_format(folder) if spec.format == "auto" else spec.format
    if fmt == "images":
        scan = _scan_images(folder, prefix, spec.max_image_pixels)
    elif fmt == "idx":
        scan = _scan_idx(folder, prefix)
    elif fmt == "tfrecord":
        scan = _scan_tfrecords(folder, prefix, spec.image_feature, spec.label_feature, spec.max_image_pixels)
    else:
        raise DataError(f"--format {fmt}: unknown; use auto, images, idx or tfrecord.")
    decisions = []
    if scan.bad:
        listed = "\n  ".join(scan.bad[:MAX_LISTED]) + (
            f"\n  ... and {len(scan.bad) - MAX_LISTED} more" if len(scan.bad) > MAX_LISTED else "")
        if not spec.skip_bad_files:
            raise DataError(f"{len(scan.bad)} unreadable files or records in {folder}:\n  {listed}\n"
                            "Fix or remove them, or pass --skip-bad-files to leave them out.")
        decisions.append(f"{len(scan.bad)} unreadable files or records left out (--skip-bad-files)")
    unstatable = [f for f in scan.files if _size(f) < 0]
    if unstatable:  # TFX's ExampleGen driver stats every file its pattern matches: nothing can leave these out
        raise DataError(f"{len(unstatable)} files that cannot even be looked at (a symlink loop or a broken link): "
                        f"{', '.join(unstatable[:MAX_LISTED])}. TFX's ExampleGen reads the size of every file it "
                        "matches, so --skip-bad-files cannot leave them out: remove them.")
    shape, resized, shape_source = _decide_shape(scan, tuple(spec.image_shape) if spec.image_shape else None)
    class_names, counts, class_source = _decide_classes(scan, spec, fmt)
    pixel_range, range_source = _decide_range(scan, tuple(spec.pixel_range) if spec.pixel_range else None)
    if len(class_names) < 2:
        raise DataError(f"{spec.path}: found {len(class_names)} class; a classifier needs at least 2.")
    empty = [n for n, c in zip(class_names, counts) if c == 0]
    if empty:
        decisions.append(f"no examples of class{'es' if len(empty) > 1 else ''} {', '.join(empty)} in this span")
    return DataFacts(path=spec.path, format=fmt, input_pattern=spec.input_pattern or scan.pattern,
                     image_shape=tuple(int(d) for d in shape), class_names=class_names,
                     image_feature=spec.image_feature, label_feature=spec.label_feature, span=span,
                     num_files=len(scan.files), num_bytes=sum(map(_size, scan.files)),  # all statable: checked above
                     class_counts=counts, resized=resized, skipped=tuple(scan.skipped + scan.bad),
                     shape_source=shape_source, class_source=class_source, decisions=tuple(decisions),
                     skip_bad_files=spec.skip_bad_files, pixel_range=pixel_range, range_source=range_source,
                     max_image_pixels=spec.max_image_pixels)


DIGITS_SHAPE, DIGITS_CLASSES = (8, 8, 1), tuple(str(d) for d in range(10))  # what write_digits writes


def write_digits(folder: str, span: int = 1, seed: Optional[int] = None) -> str:
    """Writes scikit-learn's bundled 8x8 digits as canonical tf.Examples into `folder/span-N/`.

    `seed` shuffles the examples and adds pixel noise (σ = 16 of 255), to make a second span of new
    examples from about the same distribution (a new data drop).
    Idempotent: an existing span is left as it is. Returns the span's folder.
    """
    from sklearn.datasets import load_digits

    span_dir = os.path.join(folder, f"span-{span}")
    target = os.path.join(span_dir, "digits.tfrecord")
    if tf.io.gfile.exists(target):
        return span_dir
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target
    if seed is not None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(labels))
        images, labels = images[order], labels[order]
        images = np.clip(np.rint(images + rng.normal(0, 16, images.shape)), 0, 255).astype(np.uint8)
    tf.io.gfile.makedirs(span_dir)
    tmp = target + ".tmp"
    with tf.io.TFRecordWriter(tmp) as writer:
        for pixels, label in zip(images, labels):
            writer.write(to_example(pixels, int(label)).SerializeToString())
    tf.io.gfile.rename(tmp, target, overwrite=True)
    return span_dir
