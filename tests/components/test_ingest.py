"""Ingestion from each format through the real ExampleGen PTransform (Beam, in process)."""
import dataclasses
import gzip
import io
import os
import struct

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.ingest import executor, formats
from pipeline.config import DataSpec


def _encoded(spec: formats.DataFacts):
    """Runs the ExampleGen input PTransform over the latest span; returns (encoded image, label) pairs."""
    props = {"input_base": spec.path, "custom_config": spec.example_gen_config()}
    pattern = spec.input_pattern.replace("{SPAN}", "*")
    out = os.path.join(spec.path + "_out", "examples")
    with beam.Pipeline() as p:
        (p | executor._files_to_examples(props, pattern)
           | beam.Map(lambda e: e.SerializeToString())
           | beam.io.WriteToTFRecord(out))
    collected = [tf.train.Example.FromString(r.numpy())
                 for r in tf.data.TFRecordDataset(tf.io.gfile.glob(out + "*"))]
    pairs = []
    for e in collected:
        assert not e.features.feature["image"].int64_list.value and not e.features.feature["image"].float_list.value
        (image,) = e.features.feature["image"].bytes_list.value
        assert image[:8] == b"\x89PNG\r\n\x1a\n" or image[:3] == b"\xff\xd8\xff", image[:8]
        pairs.append((image, e.features.feature["label"].int64_list.value[0]))
    return pairs


def _examples(spec: formats.DataFacts):
    """(pixels as the transform graph decodes them at the decided image shape, flat; label) pairs."""
    from models import preprocessing

    return [(preprocessing.decode(tf.constant(image), spec.image_shape).numpy().reshape(-1), label)
            for image, label in _encoded(spec)]


def _png(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_bundled_digits_are_written_once_and_probed(tmp_path):
    span = formats.write_digits(str(tmp_path))
    first = os.path.getmtime(os.path.join(span, "digits.tfrecord"))
    formats.write_digits(str(tmp_path))
    assert os.path.getmtime(os.path.join(span, "digits.tfrecord")) == first
    spec = DataSpec(path=str(tmp_path), image_shape=(8, 8, 1))
    spec = formats.probe(spec)
    assert (spec.format, spec.num_classes, spec.input_pattern) == ("tfrecord", 10, "span-{SPAN}/*")
    pairs = _examples(spec)
    assert len(pairs) == 1797
    assert {label for _, label in pairs} == set(range(10))
    assert all(p.shape == (64,) and p.max() <= 255 for p, _ in pairs)


def test_image_folder_any_size_and_colour_is_resized(tmp_path):
    rng = np.random.default_rng(0)
    for cls, count in (("cat", 3), ("dog", 2)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            rgb = rng.integers(0, 255, size=(20 + i, 30, 3), dtype=np.uint8)
            (tmp_path / cls / f"{i}.{'png' if i % 2 else 'jpg'}").write_bytes(
                _png(rgb, "PNG" if i % 2 else "JPEG"))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    spec = DataSpec(path=str(tmp_path), image_shape=(16, 16, 1))
    spec = formats.probe(spec)
    assert spec.format == "images" and spec.class_names == ("cat", "dog") and spec.num_classes == 2
    assert spec.class_counts == (3, 2) and spec.resized == 5
    assert any("notes.txt: not an image file" in s for s in spec.skipped)
    assert "notes.txt" in spec.describe() and "cat (3), dog (2)" in spec.describe()
    pairs = _examples(spec)
    assert sorted(label for _, label in pairs) == [0, 0, 0, 1, 1]
    assert all(p.shape == (256,) for p, _ in pairs)


def test_image_folder_shape_is_the_most_common_not_the_first(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"x{i}.png").write_bytes(_png(np.zeros((12, 10, 3), np.uint8)))
    (tmp_path / "a" / "0_odd.png").write_bytes(_png(np.zeros((700, 3), np.uint8)))  # sorts first
    spec = formats.probe(DataSpec(path=str(tmp_path)))
    assert spec.image_shape == (12, 10, 3) and spec.resized == 1
    assert "image shape 12x10x3 (the most common of 2 sizes, 6 of 7 images" in spec.describe()
    assert "1 images resized or converted" in spec.describe()


def test_photos_of_many_sizes_get_a_square_from_their_median_shorter_side(tmp_path):
    sizes = [(90, 120), (100, 100), (110, 150), (95, 140), (120, 90), (105, 200), (140, 100), (99, 99)]
    for i, (h, w) in enumerate(sizes):  # no size is shared by half the images; one is grey
        (tmp_path / "ab"[i % 2]).mkdir(exist_ok=True)
        pixels = np.zeros((h, w) if i == 3 else (h, w, 3), np.uint8)
        (tmp_path / "ab"[i % 2] / f"p{i}.png").write_bytes(_png(pixels))
    spec = formats.probe(DataSpec(path=str(tmp_path)))
    assert spec.image_shape == (96, 96, 3), spec.describe()  # median shorter side 99 px, down to a multiple of 32
    assert "a square from the median shorter side (99 px)" in spec.describe()
    large = tmp_path / "large"
    for i, side in enumerate((300, 310, 320)):
        (large / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        (large / "ab"[i % 2] / f"p{i}.png").write_bytes(_png(np.zeros((side, side + 40, 3), np.uint8)))
    assert formats.probe(DataSpec(path=str(large))).image_shape == (formats.MIXED_SIDE_MAX,) * 2 + (3,)


def _records(path, labels, drop_label_at=None):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, label in enumerate(labels):
            feature = {"image": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 256] * 16))}
            if i != drop_label_at:
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_stray_label_stops_the_run_with_or_without_num_classes(tmp_path):
    labels = [i % 10 for i in range(50)]
    labels[17] = 42
    _records(tmp_path / "part-0.tfrecord", labels)
    with pytest.raises(formats.DataError, match=r"(?s)not contiguous from 0.*42 \(1 examples, first: .*part-0\.tfrecord "
                                                r"record 17\).*--num-classes"):
        formats.probe(DataSpec(path=str(tmp_path)))
    with pytest.raises(formats.DataError, match=r"label 42 \(1 examples, first: .*part-0\.tfrecord record 17\) "
                                                r"outside the 10 classes 0\.\.9"):
        formats.probe(DataSpec(path=str(tmp_path), num_classes=10))
    labels[17] = 3
    _records(tmp_path / "part-0.tfrecord", labels)
    facts = formats.probe(DataSpec(path=str(tmp_path)))
    assert facts.class_names == tuple("0123456789") and facts.image_shape == (4, 4, 1)
    assert "10 classes (inferred from the integer labels 0..9, which are contiguous" in facts.describe()
    assert "image shape 4x4x1 (inferred from 16 raw values per image" in facts.describe()


def test_missing_label_in_one_record_names_the_file_and_record(tmp_path):
    _records(tmp_path / "part-3.tfrecord", [i % 2 for i in range(20)], drop_label_at=5)
    with pytest.raises(formats.DataError, match=r"part-3\.tfrecord record 5: no feature 'label' \(this record has "
                                                r"\['image'\]\)"):
        formats.probe(DataSpec(path=str(tmp_path)))
    facts = formats.probe(DataSpec(path=str(tmp_path), skip_bad_files=True))
    assert sum(facts.class_counts) == 19 and len(facts.skipped) == 1
    assert len(_examples(facts)) == 19  # ExampleGen leaves out the same record


def _write_idx(folder, images, labels, gz=True):
    def idx(array, code_dims):
        header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
        return header + array.astype(np.uint8).tobytes()
    open_ = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with open_(os.path.join(folder, "train-images-idx3-ubyte" + suffix), "wb") as f:
        f.write(idx(images, 3))
    with open_(os.path.join(folder, "train-labels-idx1-ubyte" + suffix), "wb") as f:
        f.write(idx(labels, 1))


def test_idx_files(tmp_path):
    images = np.random.default_rng(1).integers(0, 255, size=(7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6])
    _write_idx(str(tmp_path), images, labels)
    spec = DataSpec(path=str(tmp_path))
    spec = formats.probe(spec)
    assert (spec.format, spec.image_shape, spec.num_classes) == ("idx", (28, 28, 1), 7)
    pairs = sorted(_examples(spec), key=lambda p: p[1])
    assert [label for _, label in pairs] == list(range(7))
    np.testing.assert_array_equal(pairs[3][0], images[3].reshape(-1))


def test_tfrecords_with_other_feature_names_and_encodings(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 255, size=(3, 6, 6, 1), dtype=np.uint8)
    encodings = [
        tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(pixels[0][..., 0])])),
        tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels[1].tobytes()])),
        tf.train.Feature(float_list=tf.train.FloatList(value=(pixels[2].reshape(-1) / 255.0).tolist())),
    ]
    with tf.io.TFRecordWriter(str(tmp_path / "data.tfrecord")) as writer:
        for label, image in enumerate(encodings):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "img": image, "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
                .SerializeToString())
    spec = DataSpec(path=str(tmp_path), image_feature="img", label_feature="y", image_shape=(6, 6, 1))
    spec = formats.probe(spec)
    assert spec.format == "tfrecord" and spec.num_classes == 3
    pairs = sorted(_examples(spec), key=lambda p: p[1])
    for (got, label), want in zip(pairs, pixels):
        np.testing.assert_array_equal(got, want.reshape(-1))


def test_corrupt_images_are_listed_or_left_out(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "ok.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(formats.DataError, match=r"(?s)1 unreadable files.*broken\.png: not a readable image.*"
                                                r"--skip-bad-files"):
        formats.probe(DataSpec(path=str(tmp_path)))
    facts = formats.probe(DataSpec(path=str(tmp_path), skip_bad_files=True))
    assert facts.class_counts == (1, 1) and "broken.png" in facts.describe()
    assert len(_examples(facts)) == 2


def test_image_whose_header_reads_but_body_does_not_names_the_file_in_example_gen(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "ok.png").write_bytes(_png(np.full((8, 8), 9, np.uint8)))
    (tmp_path / "b" / "cut.png").write_bytes(_png(np.arange(64, dtype=np.uint8).reshape(8, 8))[:-30])
    facts = formats.probe(DataSpec(path=str(tmp_path)))  # the header is fine
    with pytest.raises(Exception, match=r"cut\.png: not a readable PNG/JPEG image"):
        _encoded(facts)
    assert len(_examples(dataclasses.replace(facts, skip_bad_files=True))) == 2


@pytest.mark.parametrize("make", ["empty", "empty_classes", "missing"])
def test_empty_or_missing_folder_is_a_clear_error(tmp_path, make):
    path = tmp_path / "data"
    if make != "missing":
        path.mkdir()
    if make == "empty_classes":
        (path / "a").mkdir()
        (path / "b").mkdir()
    match = {"missing": "no such folder", "empty": "found no data",
             "empty_classes": r"class folder 'a' \(.*/a\) holds no images\. Add its images, or remove the folder"}
    with pytest.raises(formats.DataError, match=match[make]):
        formats.probe(DataSpec(path=str(path)))


def test_raw_bytes_of_the_wrong_size_name_the_shape(tmp_path):
    example = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x00" * 10])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))}))
    with pytest.raises(formats.DataError, match=r"10 raw bytes, not the 64 of image shape \(8, 8, 1\)"):
        formats.parse_record(example.SerializeToString(), "image", "label", (8, 8, 1), ["0", "1"])


def test_jpeg_folder_examples_hold_each_files_own_bytes(tmp_path):
    rng = np.random.default_rng(3)
    files = {}
    for label, cls in enumerate(("a", "b")):
        (tmp_path / cls).mkdir()
        for i in range(3):
            data = _png(rng.integers(0, 255, size=(40 + 3 * i, 48, 3), dtype=np.uint8), "JPEG")
            (tmp_path / cls / f"{i}.jpg").write_bytes(data)
            files[data] = label
    facts = formats.probe(DataSpec(path=str(tmp_path), image_shape=(32, 32, 3)))
    pairs = _encoded(facts)
    assert sorted(pairs) == sorted(files.items())  # not decoded, not re-encoded
    assert sum(len(image) for image, _ in pairs) == facts.num_bytes


def _float_records(path, images, kind="float"):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, image in enumerate(images):
            values = np.asarray(image).reshape(-1)
            feature = (tf.train.Feature(float_list=tf.train.FloatList(value=values.tolist())) if kind == "float"
                       else tf.train.Feature(int64_list=tf.train.Int64List(value=values.astype(int).tolist())))
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": feature, "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))}))
                .SerializeToString())


@pytest.mark.parametrize("low,high,kind", [(-0.5, 0.5, "float"), (0.0, 1.0, "float"), (0.0, 255.0, "float"),
                                           (0.0, 255.0, "int")])
def test_numeric_pixel_range_is_decided_once_for_the_span(tmp_path, low, high, kind):
    rng = np.random.default_rng(4)
    levels = rng.integers(0, 256, size=(12, 6, 6))
    levels[0, 0, 0], levels[1, 0, 0] = 0, 255  # the span reaches both ends
    _float_records(tmp_path / "x.tfrecord", low + levels * (high - low) / 255.0, kind)
    facts = formats.probe(DataSpec(path=str(tmp_path)))
    assert facts.pixel_range == (low, high)
    assert f"pixel values {low:g}..{high:g} (the whole span's {'floats' if kind == 'float' else 'integers'}" \
        in facts.describe()
    decoded = sorted(p.tobytes() for p, _ in _examples(facts))
    assert decoded == sorted(image.astype(np.float32).tobytes() for image in levels.reshape(12, -1))


def test_a_dark_image_is_scaled_like_its_neighbours(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(10, 4, 4)).astype(np.float64)
    images[3] = rng.integers(0, 2, size=(4, 4))  # a dark 0..255 image: its maximum is 1
    _float_records(tmp_path / "x.tfrecord", images)
    facts = formats.probe(DataSpec(path=str(tmp_path)))
    assert facts.pixel_range == (0.0, 255.0)
    decoded = {p.tobytes() for p, _ in _examples(facts)}
    assert images[3].reshape(-1).astype(np.float32).tobytes() in decoded  # 0 and 1 stay 0 and 1, not 0 and 255


def test_pixel_range_flag_overrides_and_must_hold_the_values(tmp_path):
    values = np.linspace(0.0, 0.5, 16).reshape(1, 4, 4).repeat(4, axis=0)
    _float_records(tmp_path / "x.tfrecord", values)
    assert formats.probe(DataSpec(path=str(tmp_path))).pixel_range == (0.0, 1.0)
    facts = formats.probe(DataSpec(path=str(tmp_path), pixel_range=(0.0, 0.5)))
    assert facts.pixel_range == (0.0, 0.5) and "from --pixel-range" in facts.describe()
    assert max(p.max() for p, _ in _examples(facts)) == 255.0
    with pytest.raises(formats.DataError, match=r"--pixel-range 0.1,1 does not hold every pixel value: the span's "
                                                r"floats run 0..0.5"):
        formats.probe(DataSpec(path=str(tmp_path), pixel_range=(0.1, 1.0)))


def _bomb(fmt="PNG", side=16000):
    """A small file whose header declares side x side pixels (hundreds of megapixels)."""
    return _png(np.zeros((side, side), np.uint8), fmt) if fmt == "PNG" else _jpeg_header_bomb(side)


def _jpeg_header_bomb(side):
    """A valid small JPEG with its frame header (SOF0) rewritten to declare side x side pixels."""
    data = bytearray(_png(np.zeros((8, 8), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decompression_bomb_is_a_data_error_or_left_out(tmp_path, fmt):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(np.full((8, 8), 40 * i, np.uint8)))
    bomb = _bomb(fmt)
    assert len(bomb) < 400_000
    (tmp_path / "b" / f"bomb.{fmt.lower()}").write_bytes(bomb)
    with pytest.raises(formats.DataError, match=r"bomb\.\w+: (16000x16000 = 256000000 pixels|its header declares "
                                                r"256000000 pixels), over the limit of 40000000 pixels per image "
                                                r"\(--max-image-pixels\)"):
        formats.probe(DataSpec(path=str(tmp_path)))
    facts = formats.probe(DataSpec(path=str(tmp_path), skip_bad_files=True))
    assert facts.class_counts == (2, 2) and any("bomb" in s for s in facts.skipped)
    assert len(_encoded(facts)) == 4
    # ExampleGen checks the bound too (a file that changed after the probe), before decoding
    with pytest.raises(Exception, match=r"over the limit of 1000 pixels"):
        list(formats.read_image_file(str(tmp_path / "b" / f"bomb.{fmt.lower()}"), ["a", "b"], 1000))


def test_graph_decode_refuses_a_bomb_from_its_header(tmp_path):
    from models import preprocessing

    for fmt in ("PNG", "JPEG"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image of 256000000 pixels is over the limit of "
                                                                 r"40000000 pixels per image"):
            preprocessing.decode_batch(tf.constant([_bomb(fmt)]), (8, 8, 1))


def _two_class_folder(root):
    for c in "ab":
        os.makedirs(root / c)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")


def test_a_file_name_that_is_not_utf8_is_a_data_error_naming_it(tmp_path):
    _two_class_folder(tmp_path)
    with open(os.fsencode(str(tmp_path / "a")) + b"/\xff\xfe.png", "wb") as f:
        f.write(b"x")
    for skip in (False, True):  # TensorFlow cannot list such a folder, so it cannot be left out either
        with pytest.raises(formats.DataError, match=r"1 file name that is not UTF-8 \(\\xff\\xfe.png\).*rename"):
            formats.probe(dataclasses.replace(DataSpec(), path=str(tmp_path), skip_bad_files=skip))


def test_a_symlink_loop_is_a_bad_file_and_one_data_error_even_when_skipping(tmp_path):
    _two_class_folder(tmp_path)
    os.symlink("loop.png", tmp_path / "b" / "loop.png")
    with pytest.raises(formats.DataError, match="(?s)1 unreadable files.*loop.png.*--skip-bad-files"):
        formats.probe(dataclasses.replace(DataSpec(), path=str(tmp_path)))
    with pytest.raises(formats.DataError, match="symlink loop or a broken link.*loop.png.*remove them"):
        formats.probe(dataclasses.replace(DataSpec(), path=str(tmp_path), skip_bad_files=True))
