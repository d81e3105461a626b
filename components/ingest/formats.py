"""Turning image files into canonical tf.Examples, and finding out what a data folder holds.

Every example the pipeline sees downstream has the same two features, whatever came in:
  image  int64 list of H*W*C pixel values in 0..255 (row-major, channels last)
  label  int64 class index in 0..num_classes-1
"""
from __future__ import annotations

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

IMAGE_KEY = "image"
LABEL_KEY = "label"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr", ".gz")
_SPAN_DIR = re.compile(r"^span-(\d+)$")


class DataError(ValueError):
    """The input data cannot be used; the message says what is wrong and what to do."""


Shape = Tuple[int, int, int]


def to_example(pixels: np.ndarray, label: int) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=pixels.reshape(-1).tolist())),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }))


def fit_image(image: Image.Image, shape: Shape) -> np.ndarray:
    """Converts a PIL image to `shape` (H, W, C): grayscale or RGB, bilinear resize."""
    height, width, channels = shape
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(shape)


def decode_image(data: bytes, shape: Shape, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return fit_image(image, shape)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{where}: not a readable PNG/JPEG image ({e}). Remove or replace the file.") from e


def _read(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


# ----------------------------------------------------------------------------- image folders
def read_image_file(path: str, class_names: Sequence[str], shape: Shape) -> Iterator[Tuple[np.ndarray, int]]:
    """One example from `<class>/<file>`; files that are not images are skipped."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return
    class_name = os.path.basename(os.path.dirname(path))
    if class_name not in class_names:
        raise DataError(f"{path}: class folder '{class_name}' is not one of the known classes "
                        f"{list(class_names)} (the latest span's folders). Remove it, or add the class to "
                        "the latest span.")
    yield decode_image(_read(path), shape, path), class_names.index(class_name)


# ----------------------------------------------------------------------------- IDX (MNIST format)
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


def read_idx_file(images_path: str, shape: Shape) -> Iterator[Tuple[np.ndarray, int]]:
    labels_path = idx_labels_path(images_path)
    if not tf.io.gfile.exists(labels_path):
        raise DataError(f"{images_path}: no labels file {labels_path} beside it.")
    images, labels = _idx_array(images_path, 3), _idx_array(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels.")
    for pixels, label in zip(images, labels):
        if pixels.shape != shape[:2] or shape[2] != 1:
            pixels = fit_image(Image.fromarray(pixels), shape)
        yield pixels.reshape(shape), int(label)


# ----------------------------------------------------------------------------- TFRecords of tf.Example
def _is_encoded_image(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff"


def parse_record(record: bytes, image_feature: str, label_feature: str, shape: Shape,
                 class_names: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, int]:
    """Reads the image and label of one serialized tf.Example under any feature names."""
    example = tf.train.Example.FromString(record)
    features = example.features.feature
    for name in (image_feature, label_feature):
        if name not in features:
            raise DataError(f"a tf.Example has no feature '{name}' (it has {sorted(features)}). "
                            "Name the features with --image-feature and --label-feature.")
    image, label = features[image_feature], features[label_feature]
    size = int(np.prod(shape))
    if image.bytes_list.value:
        data = image.bytes_list.value[0]
        if _is_encoded_image(data):
            pixels = decode_image(data, shape, f"feature '{image_feature}'")
        elif len(data) == size:
            pixels = np.frombuffer(data, dtype=np.uint8)
        else:
            raise DataError(f"feature '{image_feature}' holds {len(data)} raw bytes, not the {size} of "
                            f"image shape {shape}. Pass the right --image-shape.")
    else:
        values = np.asarray(image.float_list.value or image.int64_list.value)
        if values.size != size:
            raise DataError(f"feature '{image_feature}' holds {values.size} values, not the {size} of "
                            f"image shape {shape}. Pass the right --image-shape.")
        if image.float_list.value and values.max(initial=0.0) <= 1.0:
            values = values * 255.0  # floats in [0, 1]
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if label.int64_list.value:
        label_value = int(label.int64_list.value[0])
    elif label.bytes_list.value and class_names:
        name = label.bytes_list.value[0].decode()
        if name not in class_names:
            raise DataError(f"label '{name}' is not one of the classes {list(class_names)}.")
        label_value = list(class_names).index(name)
    else:
        raise DataError(f"feature '{label_feature}' must hold one integer class index.")
    return pixels.reshape(shape), label_value


# ----------------------------------------------------------------------------- probing a data folder
def _latest_span(path: str) -> Tuple[str, str, int]:
    """Returns (prefix of the input pattern, folder of the latest span, its number; 0 without spans)."""
    spans = [(int(m.group(1)), name) for name in tf.io.gfile.listdir(path)
             if (m := _SPAN_DIR.match(name.rstrip("/")))]
    if not spans:
        return "", path, 0
    return "span-{SPAN}/", os.path.join(path, max(spans)[1].rstrip("/")), max(spans)[0]


def _files(folder: str) -> List[str]:
    return sorted(p for p in tf.io.gfile.glob(os.path.join(folder, "*")) if not tf.io.gfile.isdir(p))


def _class_dirs(folder: str) -> List[str]:
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(folder)
                  if tf.io.gfile.isdir(os.path.join(folder, name))
                  and any(f.lower().endswith(IMAGE_EXTENSIONS)
                          for f in tf.io.gfile.listdir(os.path.join(folder, name))))


def detect_format(folder: str) -> str:
    files = [os.path.basename(f) for f in _files(folder)]
    if any("idx3-ubyte" in f for f in files):
        return "idx"
    if any(f.endswith(TFRECORD_EXTENSIONS) for f in files):
        return "tfrecord"
    if _class_dirs(folder):
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
    num_classes: int
    class_names: Optional[Tuple[str, ...]] = None
    image_feature: str = IMAGE_KEY  # TFRecords: the feature names in the user's records
    label_feature: str = LABEL_KEY
    span: int = 0  # the latest span's number (0: no span folders)
    num_files: int = 0  # in the latest span
    num_bytes: int = 0  # in the latest span

    def example_gen_config(self) -> dict:
        """The ExampleGen executor's custom_config: how to read the files."""
        return {"format": self.format, "image_shape": list(self.image_shape),
                "class_names": list(self.class_names) if self.class_names else None,
                "image_feature": self.image_feature, "label_feature": self.label_feature}


def probe(spec) -> DataFacts:
    """Finds out what `spec`'s data (a pipeline.config.DataSpec) holds; what the spec states wins."""
    if not tf.io.gfile.isdir(spec.path):
        raise DataError(f"--data {spec.path}: no such folder.")
    prefix, folder, span = _latest_span(spec.path)
    fmt = detect_format(folder) if spec.format == "auto" else spec.format
    shape, num_classes, class_names = spec.image_shape, spec.num_classes, spec.class_names
    if fmt == "images":
        classes = _class_dirs(folder)
        if not classes:
            raise DataError(f"{folder}: no images found. Expected one sub-folder per class holding "
                            "PNG/JPEG files.")
        class_names = class_names or classes
        pattern = prefix + "*/*"
        files = [f for c in classes for f in _files(os.path.join(folder, c))]
        if shape is None:
            first = next(f for f in _files(os.path.join(folder, classes[0]))
                         if f.lower().endswith(IMAGE_EXTENSIONS))
            with Image.open(io.BytesIO(_read(first))) as image:
                channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "P") else 3
                shape = (image.height, image.width, channels)
        num_classes = num_classes or len(class_names)
    elif fmt == "idx":
        images = [f for f in _files(folder) if "idx3-ubyte" in f]
        if not images:
            raise DataError(f"{folder}: no IDX image files (*-images-idx3-ubyte[.gz]).")
        pattern = prefix + "*idx3-ubyte*"
        files = images
        if shape is None:
            shape = (*_idx_array(images[0], 3).shape[1:], 1)
        if num_classes is None:
            num_classes = int(max(_idx_array(idx_labels_path(f), 1).max() for f in images)) + 1
    elif fmt == "tfrecord":
        files = [f for f in _files(folder) if f.endswith(TFRECORD_EXTENSIONS)]
        if not files:
            raise DataError(f"{folder}: no TFRecord files (*.tfrecord, *.tfrecords, *.gz).")
        pattern = prefix + "*"
        compression = "GZIP" if files[0].endswith(".gz") else ""
        records = tf.data.TFRecordDataset(files, compression_type=compression)
        if shape is None:
            first = tf.train.Example.FromString(next(iter(records)).numpy())
            feature = first.features.feature.get(spec.image_feature)
            data = feature.bytes_list.value[0] if feature is not None and feature.bytes_list.value else b""
            if not _is_encoded_image(data):
                raise DataError(f"{folder}: feature '{spec.image_feature}' is not an encoded PNG/JPEG, so the "
                                "image shape cannot be read from it. Pass --image-shape H,W,C.")
            with Image.open(io.BytesIO(data)) as image:
                shape = (image.height, image.width, 1 if image.mode in ("1", "L", "LA") else 3)
        if num_classes is None:
            labels = [parse_record(r.numpy(), spec.image_feature, spec.label_feature,
                                   tuple(shape), class_names)[1] for r in records]
            if not labels:
                raise DataError(f"{folder}: the TFRecord files hold no examples.")
            num_classes = max(labels) + 1
    else:
        raise DataError(f"--format {fmt}: unknown; use auto, images, idx or tfrecord.")
    if num_classes < 2:
        raise DataError(f"{spec.path}: found {num_classes} class; a classifier needs at least 2.")
    return DataFacts(path=spec.path, format=fmt, input_pattern=spec.input_pattern or pattern,
                     image_shape=tuple(int(d) for d in shape), num_classes=int(num_classes),
                     class_names=tuple(class_names) if class_names else None,
                     image_feature=spec.image_feature, label_feature=spec.label_feature, span=span, num_files=len(files),
                     num_bytes=sum(tf.io.gfile.stat(f).length for f in files))


DIGITS_SHAPE, DIGITS_CLASSES = (8, 8, 1), 10  # what write_digits writes


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
