"""The Compressor component: its spec in `component`, its executor in `executor`, its typed report
(and the report's artifact type) in `report`. Nothing is imported here, so that importing the light
report (every gate task does) does not import the executor's TensorFlow Transform and TFMOT."""
