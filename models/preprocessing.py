"""The one place images are decoded: encoded bytes → bounded, converted, resized [0, 1] pixels.

Canonical examples keep each image encoded (a PNG/JPEG file's own bytes; numeric sources were
encoded once as PNG at ingestion). `preprocessing_fn` decodes them in the tf.Transform graph, which
is part of every exported signature, so training and TF Serving run exactly the same decode. Transform
does not materialize its output (a decoded 224-px photo is 40× its JPEG): the Trainer and the
Compressor apply the transform graph to raw examples in their input pipelines.

Before any pixel is allocated, an image's size is read from its header (PNG, JPEG, GIF, BMP) and one
over `max_image_pixels` is an InvalidArgument error naming the limit (a decompression bomb costs
nothing to refuse).
"""
import tensorflow as tf

from models.contract import IMAGE_KEY, LABEL_KEY, MAX_IMAGE_PIXELS


def _unsigned(data, offset: int, size: int, little_endian: bool):
    """The unsigned integer of `size` (2 or 4) bytes at `offset` of a scalar string."""
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8)
    weights = [256 ** i for i in range(size)] if little_endian else [256 ** i for i in reversed(range(size))]
    return tf.reduce_sum(tf.cast(raw, tf.int64) * tf.constant(weights, tf.int64))


def header_pixels(data):
    """width × height of one encoded image, read from its header only; -1 when the format is not known
    (the decoder then names the problem)."""
    length = tf.strings.length(data)
    start = lambda n: tf.strings.substr(data, 0, n)  # noqa: E731
    is_png = tf.logical_and(tf.equal(start(8), b"\x89PNG\r\n\x1a\n"), length >= 24)
    is_jpeg = tf.equal(start(3), b"\xff\xd8\xff")
    is_gif = tf.logical_and(tf.equal(start(4), b"GIF8"), length >= 10)
    is_bmp = tf.logical_and(tf.equal(start(2), b"BM"), length >= 26)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    def bmp():  # BMP heights are negative for top-down images
        height = _unsigned(data, 22, 4, True)
        return _unsigned(data, 18, 4, True) * tf.where(height >= 2 ** 31, 2 ** 32 - height, height)

    return tf.case([(is_png, lambda: _unsigned(data, 16, 4, False) * _unsigned(data, 20, 4, False)),
                    (is_jpeg, jpeg),
                    (is_gif, lambda: _unsigned(data, 6, 2, True) * _unsigned(data, 8, 2, True)),
                    (is_bmp, bmp)], default=lambda: tf.constant(-1, tf.int64), exclusive=False)


def decode(data, image_shape, max_pixels: int = MAX_IMAGE_PIXELS):
    """One encoded PNG/JPEG/GIF/BMP image → float32 [H, W, C] pixel values in 0..255: grey or RGB as
    `image_shape` says (alpha dropped), resized (bilinear, antialiased) to its H × W."""
    height, width, channels = image_shape
    pixels = header_pixels(data)
    check = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.format(
        "image of {} pixels is over the limit of {} pixels per image (max_image_pixels); send a smaller image",
        (pixels, max_pixels))])
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    have = tf.shape(image)[-1]
    if channels == 1:
        image = tf.cond(have >= 3, lambda: tf.image.rgb_to_grayscale(tf.ensure_shape(image[..., :3], [None, None, 3])),
                        lambda: image[..., :1])
    else:
        image = tf.cond(have >= 3, lambda: image[..., :3], lambda: tf.image.grayscale_to_rgb(image[..., :1]))
    image = tf.image.resize(tf.ensure_shape(image, [None, None, channels]), [height, width], antialias=True)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [height, width, channels])


def decode_batch(images, image_shape, max_pixels: int = MAX_IMAGE_PIXELS):
    """string [N] (or [N, 1]) of encoded images → float32 [N, H, W, C] in 0..255."""
    return tf.map_fn(lambda data: decode(data, image_shape, max_pixels), tf.reshape(images, [-1]),
                     fn_output_signature=tf.TensorSpec(image_shape, tf.float32))


def scale(pixels):
    """Pixel values in 0..255 → what the network reads: [0, 1] floats (as integers, like stored images)."""
    return tf.round(tf.clip_by_value(pixels, 0.0, 255.0)) / 255.0


def preprocessing_fn(inputs, custom_config):
    """Encoded images → [batch, H, W, C] floats in [0, 1]; passes the label through.

    custom_config["image_shape"]: [H, W, C] the network reads; custom_config["max_image_pixels"]: the
    decoded-size bound (default MAX_IMAGE_PIXELS).
    """
    shape = [int(d) for d in custom_config["image_shape"]]
    max_pixels = int(custom_config.get("max_image_pixels", MAX_IMAGE_PIXELS))
    outputs = {IMAGE_KEY: scale(decode_batch(inputs[IMAGE_KEY], shape, max_pixels))}
    if LABEL_KEY in inputs:
        outputs[LABEL_KEY] = tf.reshape(inputs[LABEL_KEY], [-1])
    return outputs
