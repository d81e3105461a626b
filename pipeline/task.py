"""The command of every compiled Kubeflow task: `python -m pipeline.task MODULE ARGS...` runs TFX's
entrypoint MODULE (`kubeflow_v2_run_executor`, or the ExampleGen driver of a task's preCacheCheck)
with ARGS, exactly as `python -m MODULE ARGS...` would, minus two costs no task needs:

- package __init__s that import far more than a task uses: `tfx.components`' imports every TFX
  component, and with them the executors and libraries of all of them (TF Transform for a gate, the
  InfraValidator's clients for the Trainer), while a task runs one executor; TFMA's and TFDV's import
  their whole APIs (TFMA's metrics bring NLTK), while TFX's entrypoint imports them only for the
  config protos in `standard_component_specs`. Here those packages' submodules import without their
  __init__, which runs, once, when a name is asked of the package itself (`tfma.run_model_analysis`,
  `from tfx.components import Trainer`), so an executor that uses the package gets all of it.
- the interpreter's last garbage collections walk every object TensorFlow, Beam and TFMA built:
  1.4 s a task. The heap is frozen before exiting (atexit handlers and finalizers still run).
"""
import gc
import importlib
import importlib.util
import runpy
import sys

DEFERRED_PACKAGES = ("tfx.components", "tensorflow_model_analysis", "tensorflow_data_validation")


def defer_package_init(name: str) -> None:
    """Registers package `name` with its search path but without running its __init__: an attribute
    asked of the package that names a submodule imports that submodule; any other runs the __init__."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, attr)

    package.__getattr__ = __getattr__
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, package)


def main(argv: list) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit("usage: python -m pipeline.task MODULE [ARGS...]  (MODULE: a TFX entrypoint, e.g. "
                 "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor)")
    module = argv[1]
    sys.argv = [module] + argv[2:]
    for name in DEFERRED_PACKAGES:
        defer_package_init(name)
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        found = False
    if not found:
        sys.exit(f"error: no module named {module}; the image must hold TFX and this project (see the Dockerfile)")
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        gc.freeze()


if __name__ == "__main__":
    main(sys.argv)
