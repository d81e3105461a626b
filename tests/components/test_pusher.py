"""The Pusher's copy is all or nothing: a kill -9 during it leaves no version directory."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import tensorflow as tf
from tfx.types import standard_artifacts

from components import pusher
from tests.conftest import tfx_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _push_args(tmp_path, model_dir):
    """input_dict, output_dict and exec_properties of one push, as TFX hands them to the executor."""
    model = tfx_artifact(standard_artifacts.Model, str(model_dir))
    model.id = 7
    blessing = tfx_artifact(standard_artifacts.ModelBlessing, str(tmp_path / "blessing"))
    blessing.set_int_custom_property("blessed", 1)
    infra = tfx_artifact(standard_artifacts.InfraBlessing, str(tmp_path / "infra"))
    infra.set_int_custom_property("blessed", 1)
    outputs = {"pushed_model": [tfx_artifact(standard_artifacts.PushedModel, str(tmp_path / "pushed"))],
               pusher.SERVING_RECORD: [tfx_artifact(standard_artifacts.ModelBlessing, str(tmp_path / "record"))]}
    properties = {"push_destination": json.dumps({"filesystem": {"base_directory": str(tmp_path / "serving")}})}
    return {"model": [model], "model_blessing": [blessing], "infra_blessing": [infra]}, outputs, properties


def _fake_model(tmp_path):
    serving = tmp_path / "model" / "Format-Serving"
    (serving / "variables").mkdir(parents=True)
    for i in range(20):
        (serving / "variables" / f"shard-{i}").write_bytes(os.urandom(1 << 16))
    (serving / "saved_model.pb").write_bytes(b"graph")
    return tmp_path / "model"


def test_kill_during_the_copy_leaves_no_version_directory(tmp_path):
    model_dir = _fake_model(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from tfx.utils import io_utils
        from components import pusher
        from tests.components.test_pusher import _push_args
        import pathlib
        copied = []
        real_copy = io_utils.fileio.copy
        def copy_then_die(src, dst, overwrite=False):
            real_copy(src, dst, overwrite)
            copied.append(dst)
            if len(copied) == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        io_utils.fileio.copy = copy_then_die
        pusher.Executor().Do(*_push_args(pathlib.Path({str(tmp_path)!r}), {str(model_dir)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    serving = tmp_path / "serving"
    assert not [n for n in os.listdir(serving) if n.isdigit()]  # nothing a model server would load
    assert [n for n in os.listdir(serving) if n.endswith(pusher.PARTIAL)]  # the interrupted copy

    inputs, outputs, properties = _push_args(tmp_path, model_dir)
    pusher.Executor().Do(inputs, outputs, properties)
    versions = os.listdir(serving)
    assert len(versions) == 1 and versions[0].isdigit()  # the leftover was removed
    assert len(os.listdir(serving / versions[0] / "variables")) == 20
    record = outputs[pusher.SERVING_RECORD][0]
    assert record.get_int_custom_property("blessed") == 1 and record.get_int_custom_property("current_model_id") == 7
    assert outputs["pushed_model"][0].get_string_custom_property("pushed_version") == versions[0]


def test_unblessed_model_is_not_pushed_and_not_recorded_as_served(tmp_path):
    inputs, outputs, properties = _push_args(tmp_path, _fake_model(tmp_path))
    inputs["model_blessing"][0].set_int_custom_property("blessed", 0)
    pusher.Executor().Do(inputs, outputs, properties)
    assert not tf.io.gfile.exists(str(tmp_path / "serving")) or not os.listdir(tmp_path / "serving")
    assert outputs[pusher.SERVING_RECORD][0].get_int_custom_property("blessed") == 0
    assert outputs["pushed_model"][0].get_int_custom_property("pushed") == 0


def test_refused_model_records_the_model_still_served(tmp_path):
    inputs, outputs, properties = _push_args(tmp_path, _fake_model(tmp_path))
    blessing = inputs["model_blessing"][0]
    blessing.set_int_custom_property("blessed", 0)
    blessing.set_int_custom_property("baseline_model_id", 3)
    blessing.set_string_custom_property("baseline_model", "/served/model")
    pusher.Executor().Do(inputs, outputs, properties)
    record = outputs[pusher.SERVING_RECORD][0]
    assert record.get_int_custom_property("blessed") == 1 and record.get_int_custom_property("current_model_id") == 3
    assert record.get_string_custom_property("current_model") == "/served/model"
