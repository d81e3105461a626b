"""The Compressor component (spec + executor) and its typed CompressionReport."""
from components.compressor.component import Compressor  # noqa: F401
from components.compressor.report import CompressionReport, CompressionReportArtifact  # noqa: F401
