"""The networks by name, augmentation, and fine-tuning the Keras models users have, through compression."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import augment, compression, networks, transfer

SHAPE = (32, 32, 3)
HP = {"conv_filters": (16, 32), "dense_units": 32, "convnet_filters": (16, 32, 64), "alpha": 0.35, "dropout": 0.2,
      "bn_momentum": 0.9}


def _batches(count=64, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((count, *SHAPE), np.float32)
    y = rng.integers(0, classes, count)
    return tf.data.Dataset.from_tensor_slices(({"image": x}, y)).batch(16).repeat(), x


def test_the_default_network_follows_the_data():
    assert networks.default_network((8, 8, 1)) == networks.default_network((28, 28, 1)) == "small_cnn"
    assert networks.default_network((28, 28, 3)) == networks.default_network((64, 64, 1)) == "convnet"
    sizes = {side: networks.convnet((side, side, 3), 5, HP).count_params() for side in (32, 64, 160)}
    assert len(set(sizes.values())) == 1, sizes  # global pooling: the image area does not grow the network


@pytest.mark.parametrize("name", networks.NETWORKS)
def test_every_network_is_one_flat_graph_of_images_into_probabilities(name):
    model = networks.build(name, SHAPE, 4, HP)
    assert model.input_shape == (None, *SHAPE) and model.output_shape == (None, 4)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # TFMOT needs flat graphs
    probabilities = model(np.random.default_rng(1).random((2, *SHAPE), np.float32)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(networks.NetworkError, match="choose one of"):
        networks.build("vgg99", SHAPE, 4, HP)


def test_backbone_weights_come_from_a_local_file_and_a_wrong_one_is_refused(tmp_path):
    source = networks.build("mobilenet_v2", SHAPE, 4, HP)
    backbone = keras.Model(source.input, source.get_layer("out_relu").output)
    backbone.save_weights(str(tmp_path / "no_top.h5"))
    loaded = networks.build("mobilenet_v2", SHAPE, 4, HP, weights=str(tmp_path / "no_top.h5"))
    np.testing.assert_array_equal(loaded.get_layer("Conv1").get_weights()[0], source.get_layer("Conv1").get_weights()[0])
    networks.small_cnn(SHAPE, 4, HP).save_weights(str(tmp_path / "other.h5"))
    with pytest.raises(networks.NetworkError, match=r"--backbone-weights .*other\.h5: not the no-top weights of "
                                                    r"MobileNetV2"):
        networks.build("mobilenet_v2", SHAPE, 4, HP, weights=str(tmp_path / "other.h5"))


def test_augmentation_changes_training_images_only():
    images = tf.data.Dataset.from_tensors(({"image": tf.random.uniform((8, *SHAPE), seed=1)}, tf.zeros(8)))
    first, second = [next(iter(augment.apply(images, seed=s)))[0]["image"].numpy() for s in (0, 1)]
    original = next(iter(images))[0]["image"].numpy()
    assert not np.allclose(first, original) and not np.allclose(first, second)
    assert first.min() >= 0.0 and first.max() <= 1.0


def _user_models():
    """The Keras models users fine-tune: Sequential, functional with residual adds, keras.applications, nested."""
    sequential = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(8, 3, activation="relu"),
                                   keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                                   keras.layers.Dense(16, activation="relu"), keras.layers.Dense(7, activation="softmax")])
    inputs = keras.Input(SHAPE)
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(a))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(keras.layers.Add()([a, b])))
    residual = keras.Model(inputs, keras.layers.Dense(6)(x))
    mobilenet = keras.applications.MobileNetV2(input_shape=SHAPE, alpha=0.35, weights=None, classes=5)
    nested = keras.Sequential([keras.Input(SHAPE), keras.applications.MobileNetV2(
        input_shape=SHAPE, alpha=0.35, include_top=False, weights=None), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(8)])
    return {"sequential": sequential, "residual": residual, "mobilenet_v2": mobilenet, "nested": nested}


@pytest.mark.parametrize("kind", ["sequential.keras", "sequential.h5", "residual", "mobilenet_v2", "nested"])
def test_user_models_get_a_new_head_then_prune_to_the_target_and_quantize(kind, tmp_path):
    base = _user_models()[kind.split(".")[0]]
    if "." in kind:  # through the file formats users save
        path = str(tmp_path / kind)
        base.save(path)
        base = transfer.load(path)
    model, features, replaced = transfer.adapt(base, SHAPE, 3, transfer.input_pixels(base)[0])
    assert replaced and "outputs and this data 3 classes" in replaced
    assert model.output_shape == (None, 3) and not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert len(features) >= 3 and model.get_layer("new_head") not in features
    # the reused layers carry the base's weights
    named = {layer.name: layer for layer in base.layers}
    conv = next(layer for layer in features if isinstance(layer, keras.layers.Conv2D))
    if conv.name in named:
        assert conv is named[conv.name]
    train, x = _batches()
    compile_fn = lambda m: networks.compile_model(m, 1e-3)  # noqa: E731
    compile_fn(model).fit(train, epochs=1, steps_per_epoch=2, verbose=0)
    pruned, not_pruned = compression.prune(model, compression.pruning_schedule(12, 0.8), 3, 4, train, [],
                                           compile_fn, 0)
    assert not_pruned == []
    for layer in pruned.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.kernel.shape.num_elements() >= 16:
            assert np.mean(layer.kernel.numpy() == 0) >= 0.79, layer.name
    quantized, kept_float = compression.quantize_aware(pruned, True, 1, 2, train, [], compile_fn, 0)
    served = compression.for_serving(quantized, keras.models.clone_model(model))
    np.testing.assert_allclose(served.predict(x[:4], verbose=0), quantized.predict(x[:4], verbose=0), atol=1e-5)
    int8 = compression.to_tflite(served, x[:8], sparse=True)
    assert compression.tflite_run(int8, x[:4]).shape == (4,)


def test_an_unusable_base_model_names_the_layer():
    no_head = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(transfer.IncompatibleBaseModel, match=r"has no Dense layer \(its last layer is "
                                                             r"'global_average_pooling2d"):
        transfer.check(no_head, SHAPE)
    a, b = keras.Input(SHAPE), keras.Input(SHAPE)
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Add()([a, b]))))
    with pytest.raises(transfer.IncompatibleBaseModel, match=r"has 2 inputs and 1 outputs"):
        transfer.check(two, SHAPE)
    with pytest.raises(transfer.IncompatibleBaseModel, match=r"expects inputs of shape \(64, 64, 3\)"):
        transfer.check(networks.convnet((64, 64, 3), 2, HP), SHAPE)


def test_a_model_of_this_pipeline_warm_starts_whole():
    own = networks.convnet(SHAPE, 3, HP)
    assert transfer.input_pixels(own)[0] == "0..1"
    model, features, replaced = transfer.adapt(own, SHAPE, 3, "0..1")
    assert replaced is None and model.output_names == ["probabilities"]
    x = np.random.default_rng(2).random((2, *SHAPE), np.float32)
    np.testing.assert_allclose(model(x).numpy(), own(x).numpy(), rtol=1e-6)


def _base_reading(pixels: str) -> keras.Model:
    """A user's 3-class model that reads `pixels`: a Rescaling layer inside, a keras.applications model, or neither."""
    if pixels == "0..255":
        return keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(8, 3),
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    if pixels == "-1..1":
        return keras.applications.MobileNetV2(input_shape=SHAPE, alpha=0.35, weights=None, classes=3)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])


@pytest.mark.parametrize("pixels", ["0..255", "-1..1", "0..1"])
def test_a_base_model_is_fed_the_pixels_it_was_built_for(pixels):
    base = _base_reading(pixels)
    found, why = transfer.input_pixels(base)
    assert found == pixels, why
    model, _, replaced = transfer.adapt(base, SHAPE, 3, found)
    assert replaced is None
    raw = np.random.default_rng(3).integers(0, 256, (4, *SHAPE)).astype(np.float32)  # what a camera gives
    own = {"0..255": raw, "-1..1": raw / 127.5 - 1, "0..1": raw / 255}[pixels]  # what its own preprocessing gives
    np.testing.assert_allclose(model(raw / 255).numpy(), base(own).numpy(), rtol=1e-4, atol=1e-5)
    nested = keras.Sequential([keras.Input(SHAPE), base])  # found inside a nested model too
    assert transfer.input_pixels(nested)[0] == pixels


def test_a_base_trained_on_other_classes_of_the_same_count_gets_a_new_head():
    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    base = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    ours = ["bar", "diamond", "ring"]
    _, _, replaced = transfer.adapt(base, SHAPE, 3, "0..1", ours, base_classes=["circle", "square", "star"])
    assert replaced == "the base model was trained on other classes (circle, square, star) than this data's " \
                       "(bar, diamond, ring)"
    assert transfer.adapt(base, SHAPE, 3, "0..1", ours, base_classes=ours)[2] is None  # same classes: warm start
    assert transfer.adapt(base, SHAPE, 3, "0..1", ours, base_classes=None)[2] is None  # a user's file: by count
