"""The data contract: the names the pipeline, the components and the models agree on.

The canonical example (ExampleGen writes it, every later component and serving_default read it) is a
tf.Example with
  image       bytes   one encoded image: the source file's own PNG/JPEG/GIF/BMP bytes, or PNG for
                      numeric sources (IDX, raw uint8, int and float lists)
  label       int64   the class index, 0..N-1
  class_name  bytes   the class's name (the Evaluator slices on it)

The exported SavedModel (models/signatures.py) carries the class names in assets/CLASS_NAMES_FILE and
its float Keras model in PUSHED_FLOAT_MODEL; its signatures are named below. serving/ does not import
this module: it depends on nothing but the SavedModel itself.

Plain constants only: importing this module imports no TensorFlow.
"""
import os

# The canonical example's features.
IMAGE_KEY = "image"
LABEL_KEY = "label"
CLASS_NAME_KEY = "class_name"
MAX_IMAGE_PIXELS = 40_000_000  # default bound on width × height of one encoded image (a 40-megapixel photo)

# The network's input and output layer names, and the served outputs.
PROBABILITIES = "probabilities"
CLASSES = "classes"

# Signatures of the exported model.
SERVING_DEFAULT = "serving_default"  # serialized tf.Examples → probabilities, classes, class_name
PREDICT_PIXELS = "predict_pixels"  # float pixels 0..255 [N, H, W, C]
PREDICT_IMAGES = "predict_images"  # encoded image bytes [N]
CLASSIFY = "classify"  # TF Serving's Classify API: classes (names) and scores
CLASSIFY_METHOD = "tensorflow/serving/classify"

# Files inside an exported model.
CLASS_NAMES_FILE = "class_names.txt"  # under assets/: line i names class i
PUSHED_FLOAT_MODEL = os.path.join("assets.extra", "float_model.keras")  # the float model a version came from
