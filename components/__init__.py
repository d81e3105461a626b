"""Our own TFX components.

CompressionReportArtifact is exported here because TFX's Kubeflow entrypoint imports a custom
artifact type from its KFP schema title, which must be `module.Class` with one dot.
"""
from components.compressor.report import CompressionReportArtifact  # noqa: F401
