"""Code that runs inside Transform and Trainer (locally, in Beam workers, in Kubeflow containers).

TFMOT supports only legacy Keras, so every process that imports this package uses `tf_keras`.
This is the one place the switch is made; the Dockerfile sets the same variable for containers.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
