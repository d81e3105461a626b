"""`python -m pipeline run|compile|submit|report|tensorboard`: the command line, mapped onto PipelineConfig.

Exit codes: 0 ok, 1 the run failed (or its model was not pushed), 2 bad usage or unreadable data.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import signal
import sys
import tempfile
import time
from typing import Callable, Optional

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported, here and in every process started from here
if not {"-v", "--verbose"} & set(sys.argv):  # quiet TensorFlow's C++ logs and warnings, Beam workers too
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

from pipeline import config as cfg  # noqa: E402

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


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag of `run` and `compile`, mapped onto one PipelineConfig setting."""

    setting: str  # dotted path into PipelineConfig, e.g. "hparams.batch_size"; also the argparse dest
    help: str  # what it means; "(default X)" follows from the settings class unless the help says "default"
    group: str = "general"
    type: Optional[Callable] = None
    kind: str = "value"  # value | true (sets True) | false (sets False) | append (repeatable, a list)
    name: Optional[str] = None  # default: the setting's last part, "-" for "_"
    choices: Optional[tuple] = None
    metavar: Optional[str] = None

    @property
    def option(self) -> str:
        return "--" + (self.name or self.setting.rsplit(".", 1)[-1]).replace("_", "-")


def _budgets(field: str) -> str:
    from models import networks

    return ", ".join(f"{name} {getattr(b, field)}" for name, b in networks.BUDGETS.items())


def _networks() -> tuple:
    from models import networks

    return tuple(networks.NETWORKS)


# Every setting the CLI can change, in the order --help shows them. Defaults live in pipeline/config.py only.
SETTINGS = (
    Flag("data.path", "data folder (spans in span-N/ sub-folders); default: bundled digits", "data", name="data"),
    Flag("data.format", "data format; auto: detected", "data", choices=cfg.FORMATS),
    Flag("data.image_feature", "TFRecords: the image feature's name", "data"),
    Flag("data.label_feature", "TFRecords: the label feature's name", "data"),
    Flag("data.image_shape", "H,W,C the model sees (default: the most common image size)", "data", _shape),
    Flag("data.num_classes", "number of classes; labels must be in 0..N-1 (default: class folders, label names, "
         "or integer labels if contiguous from 0)", "data", _number(int, 2)),
    Flag("data.class_names", "class names, comma-separated: name i is integer label i, or the order of string "
         "labels and class folders (default: folder names, label names, or the digits of integer labels)", "data",
         _class_names, metavar="A,B,..."),
    Flag("data.skip_bad_files", "leave unreadable images and records out (counted and listed) instead of stopping",
         "data", kind="true"),
    Flag("data.pixel_range", "numeric pixels (int/float lists): the values that map to 0..255 (default: read from "
         "the whole span: 0..1, -0.5..0.5, -1..1, 0..255, or the values' own range)", "data", _range,
         metavar="LO,HI"),
    Flag("data.max_image_pixels", "largest width x height of one image, checked from its header before decoding, "
         "in ingestion and in every served signature", "data", _number(int, 1)),
    Flag("data.input_pattern", "glob under --data ({SPAN} for spans); default: by format", "data"),
    Flag("output_dir", "output folder", name="output"),
    Flag("model_name", "served model name (default: the data folder's name; digits for the bundled data)"),
    Flag("pipeline_name", "TFX pipeline name (default: the model name)"),
    Flag("hparams.network", "the network (default: small_cnn for grey images up to 32 px, else convnet)",
         "training", name="model", choices=_networks()),
    Flag("hparams.backbone_weights", "no-top weights (.h5) of a keras.applications --model (default: the file "
         "Keras caches under ~/.keras/models/ if there, else random weights; nothing is downloaded)", "training",
         metavar="FILE"),
    Flag("hparams.augment", "random flip, rotation, zoom and contrast in training (default: on for colour images)",
         "training", kind="true", name="augment"),
    Flag("hparams.augment", "no augmentation", "training", kind="false", name="no_augment"),
    Flag("hparams.epochs", f"epoch ceiling (early stopping on validation accuracy; default by network: "
         f"{_budgets('epochs')})", "training", _positive),
    Flag("hparams.patience", f"epochs without a better validation accuracy before stopping (default by network: "
         f"{_budgets('patience')})", "training", _positive),
    Flag("hparams.warmup", f"epochs before early stopping judges (default by network: {_budgets('warmup')})",
         "training", _positive),
    Flag("hparams.batch_size", "examples per batch", "training", _positive),
    Flag("hparams.dense_units", "units of the dense layer", "training", _positive),
    Flag("hparams.learning_rate", "Adam learning rate", "training", _number(float, 0.0, low_open=True)),
    Flag("base_model", "fine-tune your own Keras model (SavedModel folder, .keras or .h5): when its outputs differ "
         "from the classes, its layers up to its last Flatten/pooling get a new head", "training", metavar="PATH"),
    Flag("base_model_pixels", "the pixel range --base-model reads; the pipeline's 0..1 images are rescaled to it "
         "(default: from a Rescaling layer at its input or its keras.applications name, else 0..1)", "training",
         choices=("0..1", "0..255", "-1..1")),
    Flag("trust_base_model_code", "load --base-model even when its Lambda layers carry Python code, which then "
         "runs in the pipeline (default: refused, Keras' safe mode)", "training", kind="true"),
    Flag("warm_start", "on a new span, train from scratch instead of from the latest pushed model", "training",
         kind="false", name="no_warm_start"),
    Flag("hparams.fine_tune_epochs", "epoch ceiling of warm start and of fine-tuning all layers", "training",
         _positive),
    Flag("hparams.head_epochs", "transfer learning: epoch ceiling of the new head on the frozen base", "training",
         _positive),
    Flag("tuning.enabled", "search hyperparameters first (TFX Tuner + KerasTuner, models/tuning.py's search space)",
         "training", kind="true", name="tune"),
    Flag("tuning.trials", "trials of the search", "training", _positive, name="tune_trials"),
    Flag("seed", "seeds training and compression: reruns on the CPU give identical models", "training", int),
    Flag("compression.prune", "skip magnitude pruning", "compression", kind="false", name="no_prune"),
    Flag("compression.qat", "skip quantization-aware training", "compression", kind="false", name="no_qat"),
    Flag("compression.target_sparsity", "fraction of weights pruned to zero, in [0, 1)", "compression", _fraction),
    Flag("compression.prune_epochs", "epochs of pruning", "compression", _positive),
    Flag("compression.qat_epochs", "epochs of quantization-aware training", "compression", _positive),
    Flag("compression.max_accuracy_drop", "largest accuracy loss of compression vs. this run's baseline",
         "compression", _unit),
    Flag("thresholds.min_accuracy", "overall accuracy floor", "quality gate", _unit),
    Flag("thresholds.min_class_accuracy", "accuracy floor of each class with at least --min-slice-examples eval "
         "examples", "quality gate", _unit),
    Flag("thresholds.min_slice_examples", "eval examples a class needs for its floor to apply (smaller classes are "
         "reported, not judged)", "quality gate", _positive),
    Flag("thresholds.max_regression", "largest overall accuracy drop vs. the model being served (the latest "
         "pushed)", "quality gate", _unit),
    Flag("beam_args", "Beam pipeline argument, repeatable (default: the DirectRunner, in-memory for small data, "
         "multi-processing for large)", kind="append", name="beam_arg", metavar="ARG"),
    Flag("enable_cache", "run every component even if cached", kind="false", name="no_cache"),
)
GROUP_TITLES = {"quality gate": "quality gate (the Evaluator, on the eval split)"}


def _get(config, path: str):
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _set(config, path: str, value) -> None:
    *owners, name = path.split(".")
    for part in owners:
        config = getattr(config, part)
    setattr(config, name, value)


def add_settings(parser: argparse.ArgumentParser, skip=()) -> None:
    """The SETTINGS flags (less the settings in `skip`), each in its group, defaults shown from config.py."""
    defaults, groups, exclusive = cfg.PipelineConfig(), {}, {}
    for flag in SETTINGS:
        if flag.setting in skip:
            continue
        if flag.group not in groups:
            groups[flag.group] = parser if flag.group == "general" else parser.add_argument_group(
                GROUP_TITLES.get(flag.group, flag.group))
        group = groups[flag.group]
        if sum(f.setting == flag.setting for f in SETTINGS) > 1:  # e.g. --augment / --no-augment
            if flag.setting not in exclusive:
                exclusive[flag.setting] = group.add_mutually_exclusive_group()
            group = exclusive[flag.setting]
        default = _get(defaults, flag.setting)
        shown = "" if "default" in flag.help or flag.kind != "value" or default is None else f" (default {default})"
        kwargs = {"dest": flag.setting, "help": flag.help + shown, "default": None}
        if flag.kind == "value":
            kwargs.update(type=flag.type, choices=flag.choices,
                          metavar=flag.metavar or (None if flag.choices else flag.option[2:].replace("-", "_").upper()))
        elif flag.kind == "append":
            kwargs.update(action="append", metavar=flag.metavar)
        else:
            kwargs.update(action="store_const", const=flag.kind == "true")
        group.add_argument(flag.option, **kwargs)
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's and TFX's own logs, "
                                                                      "and tracebacks")


def config_from_args(args, parser: argparse.ArgumentParser) -> cfg.PipelineConfig:
    """The settings the flags name, the rest as config.py defines them."""
    config = cfg.PipelineConfig()
    for flag in SETTINGS:
        value = getattr(args, flag.setting, None)
        if value is not None:
            _set(config, flag.setting, value)
    config.model_name = config.model_name if args.model_name else cfg.model_name_of(config.data.path)
    config.pipeline_name = config.pipeline_name if args.pipeline_name else config.model_name
    if config.base_model_pixels and not config.base_model:
        parser.error("--base-model-pixels describes a --base-model; give one, or leave --base-model-pixels out")
    if config.trust_base_model_code and not config.base_model:
        parser.error("--trust-base-model-code is about a --base-model; give one, or leave the flag out")
    weights = config.hparams.backbone_weights
    if weights:
        if not os.path.isfile(weights):
            parser.error(f"--backbone-weights {weights}: no such file")
        config.hparams.backbone_weights = os.path.abspath(weights)
    return config


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
        from models import compat

        absl.logging.get_absl_logger().addFilter(compat.TfxProgress())
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
    from pipeline import dag

    evaluation = result.uri(dag.EVALUATOR, "evaluation")
    if evaluation:
        from components.gates import slice_metrics

        print("\naccuracy on the eval split (candidate / served model, eval examples):")
        for name, m in slice_metrics(evaluation).items():
            served = f"{m['served_accuracy']:.4f}" if m["served_accuracy"] is not None else "-"
            print(f"  {name:28s} {m['accuracy'] or 0:.4f} / {served:6s} ({m['examples']})")
    if result.verdict:
        print(f"\nquality gate: {'blessed' if result.verdict.blessed else 'NOT blessed'} (served model compared: "
              f"{result.verdict.served_model or 'none, first push'})")
        for c in result.verdict.checks:
            if c.slice in ("overall", "compression") or not c.passed:
                mark = "ok  " if c.passed else ("FAIL" if c.judged else "  - ")
                print(f"  {mark} {c}")
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _unwritable(folder: str) -> str:
    """Why the run could not write under `folder` ('' when it can): tried, not guessed from permissions."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            return ""
    except OSError as e:
        return e.strerror or str(e)


def cmd_run(args, parser) -> int:
    """Runs the pipeline with the local runner, or its compiled Kubeflow spec here (--runner kubeflow-local)."""
    _quiet(args.verbose)
    config = config_from_args(args, parser)
    from components.ingest.formats import DataError

    start = time.time()
    problem = _unwritable(config.output_dir)
    if problem:
        print(f"error: --output {config.output_dir}: {problem}; choose a folder you can write to.", file=sys.stderr)
        return 2
    if args.runner == "kubeflow-local":
        from pipeline import kubeflow_runner

        try:
            result = kubeflow_runner.run_here(config)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except kubeflow_runner.TaskFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"\ncompiled spec: {result.spec_file}")
        print(f"pushed: {result.pushed_dir}" if result.pushed_dir else _not_pushed(result.refusal))
        print(f"total {time.time() - start:.0f} s")
        return 0 if result.pushed_dir else 1
    from pipeline import local_runner

    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, and a stop from a scheduler, end the run the same way
        signal.signal(sig, _interrupt)
    try:
        result = local_runner.run(config)
    except local_runner.Interrupted as e:
        print(f"\ninterrupted while {e} {'was' if len(e.components) < 2 else 'were'} running: marked CANCELED "
              "in ML Metadata, nothing pushed. Rerun the same command: completed components come from the "
              "cache.", file=sys.stderr)
        return 130
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except local_runner.PipelineFailed as e:
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


def cmd_compile(args, parser) -> int:
    """Writes the Kubeflow Pipelines v2 spec."""
    _quiet(args.verbose)
    config = config_from_args(args, parser)
    from components.ingest.formats import DataError
    from pipeline import kubeflow_runner

    try:
        spec = kubeflow_runner.compile_spec(config, args.pipeline_root, args.image, args.spec)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.spec}: {len(spec['pipelineSpec']['root']['dag']['tasks'])} components, "
          f"image {args.image}, pipeline root {args.pipeline_root}")
    return 0


def _plain_http(host: str, token: bool, insecure: bool) -> str:
    """'' for https or no token; a warning for a token over http:// to this machine; an error for one to
    another machine unless --insecure (then a warning)."""
    from urllib.parse import urlparse

    url = urlparse(host if "://" in host else "http://" + host)
    if not token or url.scheme != "http":
        return ""
    if url.hostname in ("localhost", "127.0.0.1", "::1") or insecure:
        return f"warning: the bearer token goes to {host} unencrypted (http://)"
    return (f"error: --host {host}: the bearer token would cross the network unencrypted; use https://, or "
            "pass --insecure if you accept that")


def cmd_submit(args, parser) -> int:
    """Uploads a compiled spec to Kubeflow Pipelines and starts a run."""
    if not os.path.isfile(args.spec):
        print(f"error: --spec {args.spec}: no such file; write it with `python -m pipeline compile`", file=sys.stderr)
        return 2
    token = os.environ.get("KF_PIPELINES_TOKEN")
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            print(f"error: --token-file {args.token_file}: {e.strerror}", file=sys.stderr)
            return 2
    problem = _plain_http(args.host, bool(token), args.insecure)
    if problem:
        print(problem, file=sys.stderr)
        if problem.startswith("error"):
            return 2
    _quiet(False)
    from pipeline import kubeflow_runner

    try:
        run_id = kubeflow_runner.submit(args.spec, args.host, args.experiment, args.run_name, args.namespace,
                                        token)
    except Exception as e:  # kfp raises connection, auth and API errors of many types
        first_line = str(e).splitlines()[0] if str(e) else ""
        print(f"error: could not submit to {args.host}: {type(e).__name__}: {first_line}", file=sys.stderr)
        return 1
    print(f"submitted: run {run_id} in experiment {args.experiment} at {args.host}")
    return 0


def cmd_report(args, parser) -> int:
    """Rebuilds the HTML report of the latest run."""
    if not os.path.exists(cfg.PipelineConfig(output_dir=args.output).metadata_path):
        print(f"error: no runs under {args.output}; run `python -m pipeline run` first", file=sys.stderr)
        return 2
    _quiet(False)
    from pipeline import lineage, report

    try:
        path = report.build(args.output, args.model_name)
    except lineage.NoRuns as e:
        print(f"error: {e}; pass the --model-name of a pipeline run under {args.output}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    if args.open:
        import webbrowser

        webbrowser.open("file://" + os.path.abspath(path))
    return 0


def cmd_tensorboard(args, parser) -> int:
    """Serves TensorBoard on the Trainer's, Compressor's and Tuner's logs (replaces this process)."""
    from pipeline import dag

    root = cfg.PipelineConfig(output_dir=args.output).pipeline_root
    logdirs = {"trainer": os.path.join(root, dag.TRAINER, "model_run"),
               "compressor": os.path.join(root, dag.COMPRESSOR, "model_run"),
               "tuner": os.path.join(root, dag.TUNER, "hparams")}
    if not any(os.path.isdir(d) for d in logdirs.values()):
        print(f"error: no Trainer runs under {root}; run `python -m pipeline run` first", file=sys.stderr)
        return 2
    spec = ",".join(f"{name}:{d}" for name, d in logdirs.items() if os.path.isdir(d))
    os.execvp(sys.executable, [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec,
                               "--host", args.host, "--port", str(args.port)])


def _parser() -> tuple:
    """The parser and its subcommands' parsers by name."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands, named = parser.add_subparsers(dest="command", required=True), {}

    def command(name, function, help, epilog=EXAMPLES):
        sub = commands.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(function=function)
        named[name] = sub
        return sub

    run = command("run", cmd_run, "run the pipeline locally (LocalDagRunner)")
    add_settings(run)
    run.add_argument("--runner", choices=["local", "kubeflow-local"], default="local",
                     help="local: TFX's LocalDagRunner (default); kubeflow-local: compile for Kubeflow Pipelines and "
                          "execute the compiled spec here, each task through its container command")
    comp = command("compile", cmd_compile, "write a Kubeflow Pipelines v2 spec")
    add_settings(comp, skip=("output_dir",))
    comp.add_argument("--runner", choices=["kubeflow"], default="kubeflow")
    comp.add_argument("--pipeline-root", required=True, help="e.g. gs://bucket/pipeline_root")
    comp.add_argument("--image", required=True, help="container image built from the Dockerfile")
    comp.add_argument("--output", dest="spec", required=True, metavar="FILE.json")
    sub = command("submit", cmd_submit, "upload a compiled spec to Kubeflow Pipelines and start a run",
                  "example:\n  python -m pipeline submit --spec digits.json --host https://kfp.example.com "
                  "--experiment digits\n\nAuthentication: --token (or KF_PIPELINES_TOKEN); an in-cluster or "
                  "kubeconfig service account; or, on GCP, the host's IAP/gcloud credentials that kfp.Client picks up.")
    sub.add_argument("--spec", required=True, metavar="FILE.json", help="written by `compile`")
    sub.add_argument("--host", required=True, help="the KFP API server, e.g. http://localhost:8080")
    sub.add_argument("--experiment", default="Default", help="experiment name (default Default)")
    sub.add_argument("--run-name", help="default: the pipeline's name")
    sub.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    sub.add_argument("--token-file", metavar="FILE",
                     help="a file holding the bearer token (default: $KF_PIPELINES_TOKEN; never on the command "
                          "line, where `ps` shows it)")
    sub.add_argument("--insecure", action="store_true",
                     help="send the token over plain http:// to a host that is not this machine")
    rep = command("report", cmd_report, "rebuild (and open) the HTML report of the latest run",
                  "example:\n  python -m pipeline report --output artifacts --open")
    rep.add_argument("--output", default="artifacts")
    rep.add_argument("--model-name", default=cfg.BUNDLED_NAME, help=f"pipeline name (default: {cfg.BUNDLED_NAME})")
    rep.add_argument("--run", default="latest", choices=["latest"], help="which run (only the latest is kept)")
    rep.add_argument("--open", action="store_true", help="open it in the default browser")
    board = command("tensorboard", cmd_tensorboard, "serve TensorBoard on every Trainer run",
                    "example:\n  python -m pipeline tensorboard --output artifacts --port 6006")
    board.add_argument("--output", default="artifacts")
    board.add_argument("--port", type=int, default=6006)
    board.add_argument("--host", default="127.0.0.1")
    return parser, named


def main(argv=None) -> int:
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    command = commands[args.command]
    if unknown:  # argparse would blame the top-level parser and show its usage; show the command's
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.function(args, command)


if __name__ == "__main__":
    code = main()
    # The interpreter's last garbage collection walks every object a run built (TensorFlow graphs, protos):
    # 1.5 s after a run. Frozen objects are skipped by it; atexit handlers and finalizers still run.
    gc.freeze()
    sys.exit(code)
