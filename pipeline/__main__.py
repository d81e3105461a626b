"""`python -m pipeline run|compile|submit|report|tensorboard`: the command line, mapped onto PipelineConfig.

Exit codes: 0 ok, 1 the run failed (or its model was not pushed), 2 bad usage or unreadable data.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

if not {"-v", "--verbose"} & set(sys.argv):  # quiet TensorFlow's C++ logs and warnings, Beam workers too
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

from pipeline import config as cfg  # noqa: E402  (pipeline/__init__ sets legacy Keras first)

EXAMPLES = """examples:
  python -m pipeline run                                   # bundled 8x8 digits → artifacts/
  python -m pipeline run --data ~/pets --format images     # one sub-folder per class
  python -m pipeline run --data ~/mnist --format idx       # train-images-idx3-ubyte.gz + labels
  python -m pipeline run --data ~/recs --format tfrecord --image-feature img --label-feature y \\
      --image-shape 28,28,1
  python -m pipeline run --target-sparsity 0.5 --no-qat
  python -m pipeline compile --runner kubeflow --pipeline-root gs://bucket/root \\
      --image gcr.io/me/digits-pipeline:latest --output digits.json
  python -m pipeline tensorboard --output artifacts
"""


class UsageError(Exception):
    pass


def _shape(text: str):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise argparse.ArgumentTypeError(f"'{text}' is not H,W,C with C 1 (grey) or 3 (RGB), e.g. 28,28,1")
    return shape


def _range(text: str):
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        low = high = None
    if low is None or not low < high:
        raise argparse.ArgumentTypeError(f"'{text}' is not LO,HI with LO < HI, e.g. -0.5,0.5 or 0,255")
    return low, high


def _number(kind, low, high=None, low_open=False, high_open=False):
    """An argparse type: a `kind` number in [low, high] (or open at either end), with a plain message."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        too_low = value is not None and (value <= low if low_open else value < low)
        too_high = value is not None and high is not None and (value >= high if high_open else value > high)
        if value is None or too_low or too_high or value != value:
            span = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g}" + (")" if high_open else "]")
                                                                if high is not None else "∞)")
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'} in {span}")
        return value
    return parse


_positive, _fraction, _unit = _number(int, 1), _number(float, 0.0, 1.0, high_open=True), _number(float, 0.0, 1.0)


def _class_names(text: str):
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"'{text}' is not two or more distinct, non-empty names separated by commas")
    return names


def _add_settings(parser: argparse.ArgumentParser, output_dir: bool = True) -> None:
    defaults = cfg.PipelineConfig()
    hp, comp_d, th = defaults.hparams, defaults.compression, defaults.thresholds

    def flag(group, name, owner, help, **kwargs):
        """A flag for the settings field `name` of `owner`, its default shown from the settings class."""
        group.add_argument("--" + name.replace("_", "-"), help=f"{help} (default {getattr(owner, name)})", **kwargs)

    data = parser.add_argument_group("data")
    data.add_argument("--data", help="data folder (spans in span-N/ sub-folders); default: bundled digits")
    data.add_argument("--format", choices=cfg.FORMATS, default="auto", help="data format (default auto: detected)")
    data.add_argument("--image-feature", default="image", help="TFRecords: the image feature's name (default image)")
    data.add_argument("--label-feature", default="label", help="TFRecords: the label feature's name (default label)")
    data.add_argument("--image-shape", type=_shape, help="H,W,C the model sees (default: the most common image size)")
    data.add_argument("--num-classes", type=_number(int, 2),
                      help="number of classes; labels must be in 0..N-1 (default: class folders, label names, or "
                           "integer labels if contiguous from 0)")
    data.add_argument("--class-names", type=_class_names, metavar="A,B,...",
                      help="class names, comma-separated: name i is integer label i, or the order of string labels "
                           "and class folders (default: folder names, label names, or the digits of integer labels)")
    data.add_argument("--skip-bad-files", action="store_true",
                      help="leave unreadable images and records out (counted and listed) instead of stopping")
    data.add_argument("--pixel-range", type=_range, metavar="LO,HI",
                      help="numeric pixels (int/float lists): the values that map to 0..255 (default: read from the "
                           "whole span: 0..1, -0.5..0.5, -1..1, 0..255, or the values' own range)")
    data.add_argument("--max-image-pixels", type=_number(int, 1),
                      help="largest width x height of one image, checked from its header before decoding, in "
                           f"ingestion and in every served signature (default {cfg.DataSpec().max_image_pixels})")
    data.add_argument("--input-pattern", help="glob under --data ({SPAN} for spans); default: by format")
    if output_dir:
        parser.add_argument("--output", default="artifacts", help="output folder (default: artifacts)")
    parser.add_argument("--model-name", help="served model name (default: the data folder's name; digits for "
                                             "the bundled data)")
    parser.add_argument("--pipeline-name", default=None, help="TFX pipeline name (default: the model name)")
    train = parser.add_argument_group("training")
    from models import networks

    train.add_argument("--model", choices=networks.NETWORKS, dest="network",
                       help="the network (default: small_cnn for grey images up to 32 px, else convnet)")
    train.add_argument("--backbone-weights", metavar="FILE",
                       help="no-top weights (.h5) of a keras.applications --model (default: the file Keras caches "
                            "under ~/.keras/models/ if there, else random weights; nothing is downloaded)")
    augment = train.add_mutually_exclusive_group()
    augment.add_argument("--augment", action="store_true", default=None,
                         help="random flip, rotation, zoom and contrast in training (default: on for colour images)")
    augment.add_argument("--no-augment", action="store_false", dest="augment", help="no augmentation")
    budgets = ", ".join(f"{name} {b.epochs}" for name, b in networks.BUDGETS.items())
    train.add_argument("--epochs", type=_positive,
                       help=f"epoch ceiling (early stopping on validation loss; default by network: {budgets})")
    train.add_argument("--patience", type=_positive,
                       help="epochs without a better validation loss before stopping (default by network: "
                            + ", ".join(f"{name} {b.patience}" for name, b in networks.BUDGETS.items()) + ")")
    flag(train, "batch_size", hp, "examples per batch", type=_positive)
    flag(train, "dense_units", hp, "units of the dense layer", type=_positive)
    flag(train, "learning_rate", hp, "Adam learning rate", type=_number(float, 0.0, low_open=True))
    train.add_argument("--base-model", metavar="PATH",
                       help="fine-tune your own Keras model (SavedModel folder, .keras or .h5): when its outputs differ "
                            "from the classes, its layers up to its last Flatten/pooling get a new head")
    train.add_argument("--no-warm-start", action="store_true",
                       help="on a new span, train from scratch instead of from the latest pushed model")
    flag(train, "fine_tune_epochs", hp, "epoch ceiling of warm start and of fine-tuning all layers", type=_positive)
    flag(train, "head_epochs", hp, "transfer learning: epoch ceiling of the new head on the frozen base",
         type=_positive)
    train.add_argument("--tune", action="store_true",
                       help="search hyperparameters first (TFX Tuner + KerasTuner, models/tuning.py's search space)")
    train.add_argument("--tune-trials", type=_positive,
                       help=f"trials of the search (default {defaults.tuning.trials})")
    train.add_argument("--seed", type=int, help=f"seeds training and compression (default {defaults.seed}): reruns "
                                                "on the CPU give identical models")
    comp = parser.add_argument_group("compression")
    comp.add_argument("--no-prune", action="store_true", help="skip magnitude pruning")
    comp.add_argument("--no-qat", action="store_true", help="skip quantization-aware training")
    flag(comp, "target_sparsity", comp_d, "fraction of weights pruned to zero, in [0, 1)", type=_fraction)
    flag(comp, "prune_epochs", comp_d, "epochs of pruning", type=_positive)
    flag(comp, "qat_epochs", comp_d, "epochs of quantization-aware training", type=_positive)
    flag(comp, "max_accuracy_drop", comp_d, "largest accuracy loss of compression vs. this run's baseline",
         type=_unit)
    gate = parser.add_argument_group("quality gate (the Evaluator, on the eval split)")
    flag(gate, "min_accuracy", th, "overall accuracy floor", type=_unit)
    flag(gate, "min_class_accuracy", th, "accuracy floor of each class with at least --min-slice-examples "
                                         "eval examples", type=_unit)
    flag(gate, "min_slice_examples", th, "eval examples a class needs for its floor to apply (smaller classes are "
                                         "reported, not judged)", type=_positive)
    flag(gate, "max_regression", th, "largest overall accuracy drop vs. the model being served (the latest pushed)",
         type=_unit)
    parser.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                        help="Beam pipeline argument, repeatable (default: the DirectRunner, in-memory for "
                             "small data, multi-processing for large)")
    parser.add_argument("--no-cache", action="store_true", help="run every component even if cached")
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's and TFX's own logs, "
                                                                      "and tracebacks")


def config_from_args(args) -> cfg.PipelineConfig:
    model_name = args.model_name or cfg.model_name_of(args.data)
    config = cfg.PipelineConfig(model_name=model_name, pipeline_name=args.pipeline_name or model_name,
                                output_dir=getattr(args, "output", "artifacts"), enable_cache=not args.no_cache)
    config.data = cfg.DataSpec(path=args.data, format=args.format, image_feature=args.image_feature,
                               label_feature=args.label_feature, image_shape=args.image_shape,
                               num_classes=args.num_classes, class_names=args.class_names,
                               input_pattern=args.input_pattern or "", skip_bad_files=args.skip_bad_files,
                               pixel_range=args.pixel_range)
    if args.max_image_pixels is not None:
        config.data.max_image_pixels = args.max_image_pixels
    for owner, fields in ((config.hparams, ("network", "backbone_weights", "augment", "epochs", "patience",
                                            "batch_size", "dense_units", "learning_rate", "fine_tune_epochs",
                                            "head_epochs")),
                          (config.compression, ("target_sparsity", "prune_epochs", "qat_epochs", "max_accuracy_drop")),
                          (config.thresholds, ("min_accuracy", "min_class_accuracy", "min_slice_examples",
                                               "max_regression"))):
        for field in fields:
            if getattr(args, field) is not None:
                setattr(owner, field, getattr(args, field))
    if config.hparams.backbone_weights:
        if not os.path.isfile(config.hparams.backbone_weights):
            raise UsageError(f"--backbone-weights {config.hparams.backbone_weights}: no such file")
        config.hparams.backbone_weights = os.path.abspath(config.hparams.backbone_weights)
    config.compression.prune, config.compression.qat = not args.no_prune, not args.no_qat
    if args.beam_arg:
        config.beam_args = args.beam_arg
    if args.seed is not None:
        config.seed = args.seed
    config.base_model, config.warm_start = args.base_model, not args.no_warm_start
    config.tuning.enabled = args.tune
    if args.tune_trials is not None:
        config.tuning.trials = args.tune_trials
    return config


class _Progress(logging.Filter):
    """Keeps TFX's component start/finish lines (with durations and cache hits), drops the rest."""

    def __init__(self):
        super().__init__()
        self.started, self.cached = {}, set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:  # the CLI ends with the error itself; -v shows TFX's own report
            return False
        if message.startswith("Component ") and message.endswith(" is running."):
            name = message.split()[1]
            self.started[name] = time.time()
            record.msg, record.args = f"{name}: running", ()
            return True
        if message.startswith("Component ") and message.endswith(" is finished."):
            name = message.split()[1]
            took = time.time() - self.started.get(name, time.time())
            record.msg, record.args = f"{name}: done in {took:.1f} s", ()
            return True
        if message.startswith("A cached execution"):
            record.msg, record.args = "  (cache hit: outputs of an earlier run reused)", ()
            return True
        return False


def _quiet(verbose: bool) -> None:
    import absl.logging

    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s" if verbose else "%(asctime)s %(message)s")
    absl.logging.set_verbosity(absl.logging.INFO)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
        for name in ("tensorflow", "apache_beam", "tensorflow_model_analysis"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("pipeline", "models", "components"):
            logging.getLogger(name).setLevel(logging.INFO)
        absl.logging.get_absl_logger().addFilter(_Progress())
        for handler in logging.getLogger().handlers:  # other libraries' errors (Beam's, with tracebacks) too
            handler.addFilter(lambda record: record.levelno < logging.ERROR)


def _print_summary(result, config) -> None:
    output_dir = config.output_dir
    print("\ncomponent                          state      seconds")
    for c in result.components:
        print(f"  {c.name:32s} {c.state:10s} {c.seconds:7.1f}")
    if result.training:
        from pipeline.report import provenance

        print(f"\nmodel provenance: {provenance(result.training)}")
    report = result.compression_report
    if report:
        print("\ncompression (eval split):")
        print("  " + "".join(f"{h:>12s}" for h in report.HEADER))
        for row in report.rows():
            print("  " + "".join(f"{v:>12s}" for v in row))
        print(f"  report: {os.path.join(output_dir, 'report', 'compression.md')} (plot: compression.png)")
    evaluation = result.uri("Evaluator", "evaluation")
    if evaluation:
        from components.gates import slice_metrics

        print("\naccuracy on the eval split (candidate / served model, eval examples):")
        for name, m in slice_metrics(evaluation).items():
            served = f"{m['served_accuracy']:.4f}" if m["served_accuracy"] is not None else "-"
            print(f"  {name:28s} {m['accuracy'] or 0:.4f} / {served:6s} ({m['examples']})")
    try:
        from pipeline import report

        print(f"run report: {report.build(output_dir, config.pipeline_name)}")
    except Exception as e:  # the report must not hide the run's own outcome
        print(f"(run report not written: {e})")
    if result.pushed:
        serving = os.path.dirname(result.pushed_dir)
        print(f"\npushed: {result.pushed_dir}")
        print("next:")
        print(f"  serve:       .venv/bin/python -m serving --model_name={config.model_name} "
              f"--model_base_path={serving} --port=8500 --rest_api_port=8501")
        print(f"  query REST:  .venv/bin/python -m serving.client predict IMAGES_OR_FOLDER --server localhost:8501 "
              f"--model {config.model_name}")
        print(f"  query gRPC:  .venv/bin/python -m serving.client predict IMAGES_OR_FOLDER --grpc localhost:8500 "
              f"--model {config.model_name}")
        print(f"  tensorboard: .venv/bin/python -m pipeline tensorboard --output {output_dir}")
    else:
        print("\n" + _not_pushed(result.refusal))


def _not_pushed(refusal: str) -> str:
    """'NOT pushed:' and each reason on its own indented line."""
    return "NOT pushed:\n  " + (refusal or "see the log above").replace("\n", "\n  ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the pipeline locally (LocalDagRunner)", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_settings(run)
    run.add_argument("--runner", choices=["local", "kubeflow-local"], default="local",
                     help="local: TFX's LocalDagRunner (default); kubeflow-local: compile for Kubeflow Pipelines and "
                          "execute the compiled spec here, each task through its container command")
    comp = commands.add_parser("compile", help="write a Kubeflow Pipelines v2 spec", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_settings(comp, output_dir=False)
    comp.add_argument("--runner", choices=["kubeflow"], default="kubeflow")
    comp.add_argument("--pipeline-root", required=True, help="e.g. gs://bucket/pipeline_root")
    comp.add_argument("--image", required=True, help="container image built from the Dockerfile")
    comp.add_argument("--output", dest="spec", required=True, metavar="FILE.json")
    sub = commands.add_parser("submit", help="upload a compiled spec to Kubeflow Pipelines and start a run",
                              epilog="example:\n  python -m pipeline submit --spec digits.json --host "
                                     "https://kfp.example.com --experiment digits\n\nAuthentication: --token (or "
                                     "KF_PIPELINES_TOKEN); an in-cluster or kubeconfig service account; or, on GCP, "
                                     "the host's IAP/gcloud credentials that kfp.Client picks up.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--spec", required=True, metavar="FILE.json", help="written by `compile`")
    sub.add_argument("--host", required=True, help="the KFP API server, e.g. http://localhost:8080")
    sub.add_argument("--experiment", default="Default", help="experiment name (default Default)")
    sub.add_argument("--run-name", help="default: the pipeline's name")
    sub.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    sub.add_argument("--token", default=os.environ.get("KF_PIPELINES_TOKEN"),
                     help="bearer token (default: $KF_PIPELINES_TOKEN)")
    rep = commands.add_parser("report", help="rebuild (and open) the HTML report of the latest run",
                              epilog="example:\n  python -m pipeline report --output artifacts --open",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("--output", default="artifacts")
    rep.add_argument("--model-name", default="digits", help="pipeline name (default: digits)")
    rep.add_argument("--run", default="latest", choices=["latest"], help="which run (only the latest is kept)")
    rep.add_argument("--open", action="store_true", help="open it in the default browser")
    board = commands.add_parser("tensorboard", help="serve TensorBoard on every Trainer run",
                                epilog="example:\n  python -m pipeline tensorboard --output artifacts --port 6006",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    board.add_argument("--output", default="artifacts")
    board.add_argument("--port", type=int, default=6006)
    board.add_argument("--host", default="127.0.0.1")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level parser and show its usage; show the command's
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")

    if args.command == "tensorboard":
        root = cfg.PipelineConfig(output_dir=args.output).pipeline_root
        logdirs = {"trainer": os.path.join(root, "Trainer", "model_run"),
                   "compressor": os.path.join(root, "Compressor", "model_run"),
                   "tuner": os.path.join(root, "Tuner", "hparams")}
        if not any(os.path.isdir(d) for d in logdirs.values()):
            print(f"error: no Trainer runs under {root}; run `python -m pipeline run` first", file=sys.stderr)
            return 2
        spec = ",".join(f"{name}:{d}" for name, d in logdirs.items() if os.path.isdir(d))
        os.execvp(sys.executable, [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec,
                                   "--host", args.host, "--port", str(args.port)])

    if args.command == "submit":
        if not os.path.isfile(args.spec):
            print(f"error: --spec {args.spec}: no such file; write it with `python -m pipeline compile`",
                  file=sys.stderr)
            return 2
        _quiet(False)
        from pipeline import runners

        try:
            run_id = runners.submit_kubeflow(args.spec, args.host, args.experiment, args.run_name, args.namespace,
                                             args.token)
        except Exception as e:  # kfp raises connection, auth and API errors of many types
            print(f"error: could not submit to {args.host}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            return 1
        print(f"submitted: run {run_id} in experiment {args.experiment} at {args.host}")
        return 0

    if args.command == "report":
        if not os.path.exists(cfg.PipelineConfig(output_dir=args.output).metadata_path):
            print(f"error: no runs under {args.output}; run `python -m pipeline run` first", file=sys.stderr)
            return 2
        _quiet(False)
        from pipeline import report, runners

        try:
            path = report.build(args.output, args.model_name)
        except runners.NoRuns as e:
            print(f"error: {e}; pass the --model-name of a pipeline run under {args.output}", file=sys.stderr)
            return 2
        print(f"report: {path}")
        if args.open:
            import webbrowser

            webbrowser.open("file://" + os.path.abspath(path))
        return 0

    _quiet(args.verbose)
    config = config_from_args(args)
    from components.ingest.formats import DataError
    from pipeline import runners

    if args.command == "compile":
        try:
            spec = runners.compile_kubeflow(config, args.pipeline_root, args.image, args.spec)
        except (DataError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.spec}: {len(spec['pipelineSpec']['root']['dag']['tasks'])} components, "
              f"image {args.image}, pipeline root {args.pipeline_root}")
        return 0

    start = time.time()
    if args.runner == "kubeflow-local":
        from pipeline.kubeflow_local import TaskFailed

        try:
            result = runners.run_kubeflow_local(config)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except TaskFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"\ncompiled spec: {result.spec_file}")
        print(f"pushed: {result.pushed_dir}" if result.pushed_dir else _not_pushed(result.refusal))
        print(f"total {time.time() - start:.0f} s")
        return 0 if result.pushed_dir else 1
    try:
        result = runners.run_local(config)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runners.PipelineFailed as e:
        if e.data_problem:
            print(f"error: {e.data_problem}", file=sys.stderr)
            return 2
        _print_summary(e.result, config)
        print(f"\nerror: the run failed: {e.cause}" + ("" if args.verbose else " (-v shows the traceback)"),
              file=sys.stderr)
        return 1
    _print_summary(result, config)
    print(f"total {time.time() - start:.0f} s")
    return 0 if result.pushed else 1


if __name__ == "__main__":
    sys.exit(main())
