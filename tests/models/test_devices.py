"""GPU code paths, exercised on the CPU: which strategy and precision each device set gets."""
import tensorflow as tf

from models.devices import DevicePlan, make_strategy, plan_devices, visible_gpus


def test_no_gpu_means_cpu_in_float32():
    plan = plan_devices([])
    assert (plan.kind, plan.mixed_precision) == ("cpu", False)
    assert "CPU" in plan.describe() and plan.single_device == "/cpu:0"
    assert make_strategy(plan) is tf.distribute.get_strategy()  # the default: no per-pass dataset distribution


def test_one_gpu_uses_mixed_precision_on_that_device():
    plan = plan_devices(["/gpu:0"])
    assert (plan.kind, plan.devices, plan.mixed_precision) == ("one_gpu", ("/gpu:0",), True)


def test_several_gpus_are_mirrored():
    plan = plan_devices(["/gpu:0", "/gpu:1", "/gpu:2"])
    assert plan.kind == "mirrored" and len(plan.devices) == 3 and plan.mixed_precision
    assert "MirroredStrategy over 3 GPUs" in plan.describe()


def test_mirrored_path_builds_and_trains_a_model_on_cpu():
    import numpy as np

    from models import networks

    strategy = make_strategy(DevicePlan("mirrored", ("/cpu:0",), False))
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    hp = {"conv_filters": [4], "dense_units": 8, "convnet_filters": [4, 8], "dropout": 0.0, "learning_rate": 1e-2,
          "bn_momentum": 0.9}
    for name in ("small_cnn", "convnet"):  # BatchNorm under MirroredStrategy too
        with strategy.scope():
            model = networks.compile_model(networks.build(name, (8, 8, 1), 3, hp), hp["learning_rate"])
        history = model.fit(np.random.rand(32, 8, 8, 1).astype("float32"), np.arange(32) % 3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert visible_gpus() == []
