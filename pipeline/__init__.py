"""The conductor: settings, the TFX DAG, runners and the CLI."""
import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
