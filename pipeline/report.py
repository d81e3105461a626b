"""One self-contained HTML page per run: data, anomalies, training curves, compression, evaluation, push.

Everything is inline (tables, PNG plots as data URIs): it opens without network access.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from typing import List

from components.compressor.report import MODEL_STAGES, PLOT
from pipeline import dag
from pipeline.lineage import RunResult, latest_run



def _png(fig, tight: bool = False) -> str:
    """The figure as a PNG data URI; tight: grown or cropped to every label, so none is clipped."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, **({"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table(header: List[str], rows: List[list], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def data_section(result: RunResult, data_facts_path: str) -> str:
    """What the probe found and decided, then per split: example count and examples per class
    (from StatisticsGen's statistics of the class_name feature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow_data_validation as tfdv

    facts = ""
    if os.path.exists(data_facts_path):
        with open(data_facts_path) as f:
            facts = f'<pre id="data-facts">{html.escape(f.read())}</pre>'
    uri = result.uri(dag.STATISTICS_GEN, "statistics")
    if uri is None:
        return facts + "<p>No statistics (StatisticsGen did not run).</p>"
    rows, counts = [], {}
    for split in sorted(os.listdir(uri)):
        stats = tfdv.load_stats_binary(os.path.join(uri, split, "FeatureStats.pb")).datasets[0]
        name = split.replace("Split-", "")
        features = {f.path.step[0]: f for f in stats.features}
        image, classes = features.get("image"), features.get("class_name")
        rows.append([name, stats.num_examples, *encoded_kb(image)])
        if classes is not None:
            counts[name] = {b.label: b.sample_count for b in classes.string_stats.rank_histogram.buckets}
    names = sorted({n for split in counts.values() for n in split})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 3.2))
    width = 0.8 / max(1, len(counts))
    for i, (split, by_name) in enumerate(sorted(counts.items())):
        ax.bar([j + i * width for j in range(len(names))], [by_name.get(n, 0) for n in names], width, label=split)
    ax.set_xticks([j + width * (len(counts) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=45 if max(map(len, names), default=0) > 3 else 0, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("examples")
    ax.set_title("examples per class and split")
    ax.legend()
    fig.tight_layout()
    return (facts + _table(["split", "examples", "mean encoded image (KB)", "largest (KB)"], rows) +
            f'<img id="label-plot" alt="examples per class" src="{_png(fig)}">')


def encoded_kb(image) -> list:
    """[mean, largest] encoded image size in KB, as text, from TFDV's statistics of the image feature: a bytes
    feature's sizes are in string_stats (avg_length; no largest), an image-domain one's in bytes_stats."""
    if image is None:
        return ["missing", "missing"]
    if image.bytes_stats.avg_num_bytes:
        return [f"{image.bytes_stats.avg_num_bytes / 1024:.1f}", f"{image.bytes_stats.max_num_bytes / 1024:.1f}"]
    return [f"{image.string_stats.avg_length / 1024:.1f}", "—"]


def anomalies_section(result: RunResult) -> str:
    from components.gates import describe_anomalies

    artifact = result.artifacts.get((dag.EXAMPLE_VALIDATOR, "anomalies"))
    if artifact is None:
        return "<p>ExampleValidator did not run.</p>"
    split_names = artifact.properties["split_names"].string_value
    lines = describe_anomalies(artifact.uri, split_names)
    if not lines:
        return '<p class="ok">No anomalies: every split matches the schema.</p>'
    return '<ul class="bad">' + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def curves_section(result: RunResult) -> str:
    """Loss and accuracy per epoch for each compression stage, read from the TensorBoard logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {"baseline": result.uri(dag.TRAINER, "model_run"), "pruned": result.uri(dag.COMPRESSOR, "model_run"),
            "pqat": result.uri(dag.COMPRESSOR, "model_run")}
    if not runs["baseline"]:
        return "<p>The Trainer did not run.</p>"
    import tensorflow as tf

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    found = False
    offset = 0  # stages are plotted one after the other on one epoch axis
    for stage in MODEL_STAGES:
        stage_epochs = 0
        for kind, style in (("train", "-"), ("validation", "--")):
            path = os.path.join(runs[stage] or "", stage, kind)
            if not os.path.isdir(path):
                continue
            events = EventAccumulator(path, size_guidance={"tensors": 0}).Reload()
            for ax, tag in zip(axes, ("epoch_loss", "epoch_accuracy")):
                if tag in events.Tags().get("tensors", []):
                    points = events.Tensors(tag)
                    ax.plot([offset + p.step for p in points], [float(tf.make_ndarray(p.tensor_proto)) for p in points],
                            style, marker="o", label=f"{stage} {kind}")
                    stage_epochs = max(stage_epochs, len(points))
                    found = True
        offset += stage_epochs
    if not found:
        return "<p>No training curves found.</p>"
    for ax, title in zip(axes, ("loss", "accuracy")):
        ax.set_title(f"{title} per epoch (stages in sequence)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return f'<img id="curves-plot" alt="training curves" src="{_png(fig)}">'


def provenance(training: dict) -> str:
    """One line: where the model came from, how it was trained, with which hyperparameters."""
    phases = {}
    for epoch in training["epochs"]:
        phases[epoch["phase"]] = phases.get(epoch["phase"], 0) + 1
    hp = training["hparams"]
    network = training.get("network", "small_cnn")
    if network == "small_cnn":
        shape = f"conv {hp['conv_filters']}, dense {hp['dense_units']}, "
    elif network == "convnet":
        shape = f"blocks {hp['convnet_filters']}, "
    else:
        shape = ""
    weights = f" (weights {hp['backbone_weights']})" if hp.get("backbone_weights") and network != "base model" else ""
    return (f"{training['start']}" + (f"; new head ({training['head_replaced']})" if training["head_replaced"] else "")
            + f"; network {network}{weights}; augmentation {'on' if training.get('augment') else 'off'}"
            + "; " + ("; ".join(training["stopped"]) if training.get("stopped")
                      else ", ".join(f"{name}: {n} epochs" for name, n in phases.items()))
            + f"; hyperparameters {'tuned' if training['tuned'] else 'defaults'}: {shape}"
              f"dropout {hp['dropout']:.2f}, learning rate {hp['learning_rate']:g}")


def provenance_section(result: RunResult) -> str:
    """Where the model came from: from scratch, warm-started or transferred; tuned or not; hyperparameters."""
    if not result.training:
        return "<p>The Trainer did not run.</p>"
    hp = result.training["hparams"]
    tuner = result.uri(dag.TUNER, "tuner_results")
    trials = ""
    if tuner and os.path.exists(os.path.join(tuner, "tuner_results.json")):
        with open(os.path.join(tuner, "tuner_results.json")) as f:
            rows = json.load(f)
        keys = [k for k in rows[0] if k not in ("trial_id", "score")] if rows else []
        trials = "<h3>Tuning trials (best first; score = validation loss)</h3>" + _table(
            ["trial", "score", *keys], [[r["trial_id"], f"{r['score']:.4f}", *[r[k] for k in keys]] for r in rows],
            "trials")
    return (f'<p id="provenance">{html.escape(provenance(result.training))}</p>' +
            _table(["hyperparameter", "value"], [[k, v] for k, v in sorted(hp.items())], "hparams") + trials)


def compression_section(result: RunResult) -> str:
    report = result.compression_report
    if not report:
        return "<p>No compression report.</p>"
    with open(os.path.join(result.uri(dag.COMPRESSOR, "report"), PLOT), "rb") as f:
        plot = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return (_table(report.HEADER, report.rows(), "compression") +
            f'<img id="compression-plot" alt="accuracy vs size" src="{plot}">')


def evaluation_section(result: RunResult) -> str:
    """Accuracy overall and per class, against the served model, with the gate's failing checks marked."""
    from components.gates import slice_metrics

    uri = result.uri(dag.EVALUATOR, "evaluation")
    if uri is None:
        return "<p>The Evaluator did not run.</p>"
    verdict = result.verdict
    checks = verdict.checks if verdict else []
    failing_slices = {c.slice for c in checks if c.judged and not c.passed}
    rows, classes = [], []
    for name, m in slice_metrics(uri).items():
        served = m["served_accuracy"]
        row = [name, f"{m['accuracy']:.4f}" if m["accuracy"] is not None else "?",
               f"{served:.4f}" if served is not None else "-",
               f"{m['accuracy'] - served:+.4f}" if served is not None and m["accuracy"] is not None else "-",
               m["examples"]]
        (rows if name == "overall" else classes).append((row, name in failing_slices))

    def table(entries, css):
        head = "".join(f"<th>{h}</th>" for h in ("slice", "accuracy", "served model", "change", "examples"))
        body = "".join(f'<tr class="{"fail" if failing else ""}">' + "".join(
            f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row, failing in entries)
        return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    blessed = verdict is not None and verdict.blessed
    served = html.escape(verdict.served_model) if verdict and verdict.served_model else "none (first push)"
    heading = (f'<p class="{"ok" if blessed else "bad"}">{"Blessed" if blessed else "NOT blessed"} by the '
               f'QualityGate; compared with the served model: {served}</p>')
    listed = _table(["check", "slice", "value", "bound", "eval examples", "result"], [
        [c.name, c.slice, "-" if c.value is None else f"{c.value:.4f}", c.bound,
         "-" if c.examples is None else c.examples,
         ("passed" if c.passed else "FAILED") if c.judged else f"not judged: {c.why_not_judged}"]
        for c in checks if not c.passed or c.slice in ("overall", "compression")], "checks") if checks else ""
    return heading + listed + table(rows, "overall") + "<h3>Per class</h3>" + table(classes, "per-class")


WORST = 12  # eval images shown that the model gets most wrong
WORST_SCANNED = 2000  # eval examples scored to find them


def _confusion(uri: str):
    """(class ids, {(actual, predicted): count}) of TFMA's MultiClassConfusionMatrixPlot on the whole eval split."""
    import tensorflow_model_analysis as tfma

    def find(node):
        if isinstance(node, dict):
            if "multiClassConfusionMatrixAtThresholds" in node:
                return node["multiClassConfusionMatrixAtThresholds"]
            return next((m for m in map(find, node.values()) if m is not None), None)
        return None

    for slice_key, plots in tfma.load_eval_result(uri).plots:
        matrix = find(plots) if slice_key == () else None
        if matrix:
            entries = matrix["matrices"][0].get("entries", [])
            counts = {(int(e.get("actualClassId", 0)), int(e.get("predictedClassId", 0))):
                      float(e.get("numWeightedExamples", 0)) for e in entries}
            return sorted({a for a, _ in counts} | {p for _, p in counts}), counts
    return [], {}


DPI = 100


def short(name: str, most: int = 40) -> str:
    """A class name for a figure: whole up to `most` characters, else its start and end around '…' (names
    that differ only at the end, such as numbered ones, stay distinct)."""
    return name if len(name) <= most else name[:most // 2 - 1] + "…" + name[-(most // 2 - 1):]


def confusion_figure(matrix, names: List[str]):
    """The confusion matrix as a figure whose cells keep a readable size however many classes there are and
    however long their names: the figure grows around the matrix, and is saved tight to its labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(names)
    cell = max(0.3, min(0.5, 9.0 / max(n, 1)))  # inches: 0.5 up to 18 classes, then down to 0.3
    side = max(n * cell, 2.5)
    labels = [short(name) for name in names]
    margin = 0.5 + 0.075 * max(map(len, labels), default=1)  # room for the longest tick label at 9 pt
    fig = plt.figure(figsize=(margin + side + 0.3, margin + side + 0.6))
    ax = fig.add_axes([margin / (margin + side + 0.3), margin / (margin + side + 0.6),
                       side / (margin + side + 0.3), side / (margin + side + 0.6)])
    ax.imshow(matrix, cmap="Blues", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    font = 9 if cell >= 0.4 else 7
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=font,
                    color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.set_xlabel("predicted", fontsize=10)
    ax.set_ylabel("true", fontsize=10)
    ax.set_title(f"confusion matrix (eval split, TFMA; {n} classes)", fontsize=11, loc="left")
    return fig


def worst_figure(images, captions: List[str]):
    """Eval images with their captions (true → predicted, probability), large enough to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(images))  # four across fit the page's width unscaled
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(caption, fontsize=10)
    fig.tight_layout()
    return fig


def images_section(result: RunResult) -> str:
    """Training images as the network sees them, the confusion matrix by class name (TFMA's
    MultiClassConfusionMatrixPlot) and the eval images the model gets most wrong."""
    import numpy as np
    import tensorflow as tf

    from models.trainer import TRAINING_IMAGES

    parts = []
    run = result.uri(dag.TRAINER, "model_run")
    if run and os.path.exists(os.path.join(run, TRAINING_IMAGES)):
        with open(os.path.join(run, TRAINING_IMAGES), "rb") as f:
            parts.append("<h3>Training images, as the network sees them (decoded, resized"
                         + (", augmented" if (result.training or {}).get("augment") else "") + ")</h3>"
                         + f'<img id="training-images" alt="training images" style="image-rendering:pixelated;'
                         f'min-width:480px" src="data:image/png;base64,{base64.b64encode(f.read()).decode()}">')
    model_uri, examples_uri = result.uri(dag.COMPRESSOR, "compressed_model"), result.uri(dag.EXAMPLE_GEN,
                                                                                         "examples")
    if not model_uri or not examples_uri:
        return "".join(parts) or "<p>No model to show.</p>"
    serving = os.path.join(model_uri, "Format-Serving")
    from models.signatures import class_names_of

    names = class_names_of(serving)
    evaluation = result.uri(dag.EVALUATOR, "evaluation")
    if evaluation:
        ids, counts = _confusion(evaluation)
        if ids:
            matrix = np.zeros((len(names), len(names)))
            for (actual, predicted), count in counts.items():
                if actual < len(names) and predicted < len(names):
                    matrix[actual, predicted] = count
            parts.append('<h3>Confusion matrix</h3><img id="confusion-matrix" alt="confusion matrix" '
                         f'src="{_png(confusion_figure(matrix, names), tight=True)}">')
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(WORST_SCANNED)]
    if records:
        signature = tf.saved_model.load(serving).signatures["serving_default"]
        probabilities = np.concatenate([signature(examples=tf.constant(records[i:i + 256]))["probabilities"].numpy()
                                        for i in range(0, len(records), 256)])
        labels = np.array([tf.train.Example.FromString(r).features.feature["label"].int64_list.value[0]
                           for r in records])
        true_p = probabilities[np.arange(len(labels)), labels]
        worst = [i for i in np.argsort(true_p) if probabilities[i].argmax() != labels[i]][:WORST]
        if worst:
            images = [tf.io.decode_image(tf.train.Example.FromString(records[i]).features.feature[
                "image"].bytes_list.value[0], expand_animations=False).numpy() for i in worst]
            fig = worst_figure(images, [f"{short(names[labels[i]], 22)}\n→ {short(names[probabilities[i].argmax()], 22)}"
                                        f" {probabilities[i].max():.2f}" for i in worst])
            parts.append(f"<h3>The {len(worst)} eval images the model gets most wrong (true → predicted, "
                         f'probability; of {len(records)} scored)</h3><img id="worst-images" alt="worst eval images" '
                         f'src="{_png(fig, tight=True)}">')
        else:
            parts.append(f"<p>The model classifies all {len(records)} scored eval images correctly.</p>")
    return "".join(parts)


def push_section(result: RunResult) -> str:
    if result.pushed:
        return f'<p class="ok">Pushed: <code>{html.escape(result.pushed_dir)}</code></p>'
    reasons = (result.refusal or "the run did not reach the Pusher").splitlines()
    return '<p class="bad">Not pushed:</p><ul class="bad">' + "".join(
        f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>"


def html_page(title: str, body: str) -> str:
    """The report's page: its style, `title` as heading, `body` (HTML). Once loaded, each image records its
    natural and rendered widths (data-natural-width, data-rendered-width) for the browser checks."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}tr.fail td{{background:#fde7ea;color:#b00020;font-weight:bold}}th{{background:#f3f3f3}}.ok{{color:#176c2f}}.bad{{color:#b00020}}
img{{max-width:100%;display:block;margin:.5em 0}}</style></head><body>
<h1>{html.escape(title)}</h1>{body}
<script>window.addEventListener("load",()=>document.querySelectorAll("img").forEach(i=>{{i.dataset.naturalWidth=i.naturalWidth;i.dataset.renderedWidth=i.clientWidth}}));</script>
</body></html>"""


def build(output_dir: str, pipeline_name: str) -> str:
    """Writes <output>/report/index.html for the latest run (atomically); returns its path."""
    from pipeline.config import PipelineConfig

    paths = PipelineConfig(output_dir=output_dir)
    result = latest_run(paths.metadata_path, pipeline_name)
    components = _table(["component", "state", "seconds"],
                        [[c.name, c.state, f"{c.seconds:.1f}"] for c in result.components])
    sections = [("Components", components), ("Data", data_section(result, paths.data_facts_path)), ("Anomalies", anomalies_section(result)),
                ("Provenance", provenance_section(result)), ("Training", curves_section(result)),
                ("Compression", compression_section(result)),
                ("Evaluation", evaluation_section(result)), ("Images", images_section(result)),
                ("Push", push_section(result))]
    body = "".join(f'<section id="{t.lower()}"><h2>{t}</h2>{content}</section>' for t, content in sections)
    page = html_page(f"{pipeline_name}: run report", f"<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>{body}")
    os.makedirs(paths.report_dir, exist_ok=True)
    path = os.path.join(paths.report_dir, "index.html")
    with open(path + ".tmp", "w") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return path

