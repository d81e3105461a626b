"""Code that runs inside Transform and Trainer (locally, in Beam workers, in Kubeflow containers).

TFMOT supports only legacy Keras, so every process that imports this package must use `tf_keras`:
TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported. The entry points set it (the CLI, the
Makefile, the tests' conftest, the Dockerfile, the benchmarks); importing this package only checks.
"""
import os

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError("the pipeline's models need legacy Keras (TensorFlow Model Optimization supports only "
                      "tf_keras): set TF_USE_LEGACY_KERAS=1 in the environment before Python starts (`make` and "
                      "`python -m pipeline` do), e.g. `TF_USE_LEGACY_KERAS=1 python your_script.py`")
