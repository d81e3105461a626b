"""The serving contract: what the exported SavedModel takes and returns.

Signatures (each runs the tf.Transform graph's decode, then the network):
  serving_default   examples: string [N]   serialized tf.Example with a bytes `image` feature holding
                                           one encoded PNG/JPEG (the canonical example; TFX's
                                           convention; the Evaluator uses it)
  predict_pixels    pixels: float32 [N, H, W, C]   pixel values in 0..255 (plain JSON numbers)
  predict_images    images: string [N]     encoded PNG/JPEG/GIF/BMP bytes (`{"b64": ...}` over REST),
                                           decoded like the training data (grey/RGB, resized)
An encoded image whose header declares more pixels than the model's max_image_pixels is refused
(INVALID_ARGUMENT naming the limit) before it is decoded.
Outputs: probabilities float32 [N, num_classes], classes int64 [N], class_name string [N].
  classify          inputs: string [N]     serialized tf.Examples, as serving_default
                                           (method tensorflow/serving/classify: TF Serving's Classify API)
Outputs: classes string [N, num_classes] (the class names), scores float32 [N, num_classes].

The class names travel with the model: assets/class_names.txt, one per line, line i naming class i.
"""
import os
import tempfile

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from models import data
from models.contract import (CLASS_NAME_KEY, CLASS_NAMES_FILE, CLASSES, CLASSIFY, CLASSIFY_METHOD, IMAGE_KEY,
                             PREDICT_IMAGES, PREDICT_PIXELS, PROBABILITIES, SERVING_DEFAULT)
from models.preprocessing import scale


class _Untracked:
    """Holds the Keras model without making it a SavedModel dependency (its optimizer stays out)."""

    def __init__(self, model):
        self.model = model




def class_names_of(export_dir: str) -> list:
    """The class names an exported model was trained on (line i names class i)."""
    with tf.io.gfile.GFile(os.path.join(export_dir, "assets", CLASS_NAMES_FILE)) as f:
        return f.read().splitlines()


class ServingModule(tf.Module):
    def __init__(self, model, tft_output, image_shape, class_names, assets_dir: str):
        super().__init__()
        self._keras = _Untracked(model)
        # The network's variables, saved under readable names: weights/<layer>.<variable>.
        self.weights = {}
        for variable in model.variables:
            name = ".".join(part for part in variable.name.split(":")[0].split("/") if part)
            self.weights[name if name not in self.weights else f"{name}_{len(self.weights)}"] = variable
        self.tft_layer = data.transform_layer(tft_output)
        self.image_shape = tuple(int(d) for d in image_shape)
        spec = tft_output.raw_feature_spec()
        self._example_spec = {IMAGE_KEY: spec[IMAGE_KEY]}
        names_file = os.path.join(assets_dir, CLASS_NAMES_FILE)
        with tf.io.gfile.GFile(names_file, "w") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        self.class_names_asset = tf.saved_model.Asset(names_file)
        self.class_names = tf.constant(list(class_names), tf.string)

    def _outputs(self, images):
        """images: what the network reads ([N, H, W, C] in [0, 1]) → outputs."""
        probabilities = tf.cast(self._keras.model(images, training=False), tf.float32)
        classes = tf.argmax(probabilities, axis=-1)
        return {PROBABILITIES: probabilities, CLASSES: classes,
                CLASS_NAME_KEY: tf.gather(self.class_names, classes)}

    def _from_encoded(self, images):
        """images: string [N] or [N, 1] of encoded images → outputs, through the transform graph."""
        return self._outputs(self.tft_layer({IMAGE_KEY: tf.reshape(images, [-1, 1])})[IMAGE_KEY])

    # autograph=False: the signatures are straight-line tensor code; converting the Keras and transform
    # layers they call took most of an export's time.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(self, examples):
        return self._from_encoded(tf.io.parse_example(examples, self._example_spec)[IMAGE_KEY])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")], autograph=False)
    def classify(self, inputs):
        scores = self.serve_examples(inputs)[PROBABILITIES]
        classes = tf.tile(self.class_names[tf.newaxis], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    def serve_pixels_fn(self):
        return tf.function(lambda pixels: self._outputs(scale(pixels)), input_signature=[
            tf.TensorSpec([None, *self.image_shape], tf.float32, name="pixels")], autograph=False)

    def serve_images_fn(self):
        return tf.function(self._from_encoded, input_signature=[tf.TensorSpec([None], tf.string, name="images")],
                           autograph=False)


def export(model, tft_output, image_shape, class_names, export_dir: str) -> dict:
    """Saves `model` with the transform graph, the class names and the four signatures above; returns the
    signatures (name → the concrete function saved), callable in this process."""
    with tempfile.TemporaryDirectory() as assets_dir:
        module = ServingModule(model, tft_output, image_shape, class_names, assets_dir)
        signatures = {
            SERVING_DEFAULT: module.serve_examples.get_concrete_function(),
            PREDICT_PIXELS: module.serve_pixels_fn().get_concrete_function(),
            PREDICT_IMAGES: module.serve_images_fn().get_concrete_function(),
            CLASSIFY: module.classify.get_concrete_function(),
        }
        tf.saved_model.save(module, export_dir, signatures=signatures)
    set_method_names(export_dir, {CLASSIFY: CLASSIFY_METHOD})
    return signatures


def set_method_names(export_dir: str, methods: dict) -> None:
    """Sets signature kinds (`{"classify": "tensorflow/serving/classify"}`) in a saved model: tf.saved_model.save
    marks every signature as a predict one, and TF Serving's Classify and Regress APIs need their own kind."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(path, "rb").read())
    for name, method in methods.items():
        saved_model.meta_graphs[0].signature_def[name].method_name = method
    with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
        f.write(saved_model.SerializeToString())
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
