"""Our own TFX components.

CompressionReportArtifact is exported here because TFX's Kubeflow entrypoint imports a custom
artifact type from its KFP schema title, which must be `module.Class` with one dot.
"""
import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from components.compressor.report import CompressionReportArtifact  # noqa: F401,E402
