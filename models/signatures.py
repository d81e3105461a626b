"""The serving contract: what the exported SavedModel takes and returns.

Signatures (each runs the tf.Transform graph, then the network):
  serving_default   examples: string [N]   serialized tf.Example with an int64 `image` feature
                                           (TFX's convention; the Evaluator uses it)
  predict_pixels    pixels: float32 [N, H, W, C]   pixel values in 0..255 (plain JSON numbers)
  predict_images    images: string [N]     encoded PNG/JPEG bytes (`{"b64": ...}` over REST),
                                           converted like the training data (grey/RGB, resized)
Outputs: probabilities float32 [N, num_classes], classes int64 [N].
"""
import tensorflow as tf

from models.preprocessing import IMAGE_KEY


class _Untracked:
    """Holds the Keras model without making it a SavedModel dependency (its optimizer stays out)."""

    def __init__(self, model):
        self.model = model


class ServingModule(tf.Module):
    def __init__(self, model, tft_output, image_shape):
        super().__init__()
        self._keras = _Untracked(model)
        # The network's variables, saved under readable names: weights/<layer>.<variable>.
        self.weights = {}
        for variable in model.variables:
            name = ".".join(part for part in variable.name.split(":")[0].split("/") if part)
            self.weights[name if name not in self.weights else f"{name}_{len(self.weights)}"] = variable
        self.tft_layer = tft_output.transform_features_layer()
        self.image_shape = tuple(int(d) for d in image_shape)
        spec = tft_output.raw_feature_spec()
        self._example_spec = {IMAGE_KEY: spec[IMAGE_KEY]}

    def _predict(self, pixels):
        """pixels: float [N, H, W, C] in 0..255 → outputs."""
        height, width, channels = self.image_shape
        raw = tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.int64)
        return self._from_raw(tf.reshape(raw, [-1, height * width * channels]))

    def _from_raw(self, image):
        transformed = self.tft_layer({IMAGE_KEY: image})
        probabilities = tf.cast(self._keras.model(transformed[IMAGE_KEY], training=False), tf.float32)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, self._example_spec)
        return self._from_raw(parsed[IMAGE_KEY])

    def serve_pixels_fn(self):
        return tf.function(self._predict, input_signature=[
            tf.TensorSpec([None, *self.image_shape], tf.float32, name="pixels")])

    def serve_images_fn(self):
        height, width, channels = self.image_shape

        def decode(data):
            image = tf.io.decode_image(data, channels=channels, expand_animations=False)
            image = tf.image.resize(tf.cast(image, tf.float32), [height, width], antialias=False)
            return tf.ensure_shape(image, [height, width, channels])

        def serve_images(images):
            return self._predict(tf.map_fn(decode, images, fn_output_signature=tf.float32))

        return tf.function(serve_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])


def export(model, tft_output, image_shape, export_dir: str) -> None:
    """Saves `model` with the transform graph and the three signatures above."""
    module = ServingModule(model, tft_output, image_shape)
    signatures = {
        "serving_default": module.serve_examples.get_concrete_function(),
        "predict_pixels": module.serve_pixels_fn().get_concrete_function(),
        "predict_images": module.serve_images_fn().get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
