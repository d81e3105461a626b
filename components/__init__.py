"""Our own TFX components."""
import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
