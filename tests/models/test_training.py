"""The stopping rule and the schedule the Trainer fits with (models/trainer.py), on a real BatchNorm network."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import networks, trainer

HP = {"convnet_filters": (16, 32, 64), "dropout": 0.2, "bn_momentum": 0.9, "conv_filters": (8,), "dense_units": 8}


@pytest.fixture(scope="module")
def quadrants():
    """4 classes: which quarter of a noisy 32-px colour image holds a patch of random colour. Train (repeated)
    and validation ({"image"}, label) batches."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 0.6, (320, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 4, 320)
    for image, label in zip(x, y):
        top, left = 16 * (label // 2) + rng.integers(0, 8), 16 * (label % 2) + rng.integers(0, 8)
        image[top:top + 8, left:left + 8] = rng.uniform(0.3, 1.0, 3)
    data = lambda a, b: tf.data.Dataset.from_tensor_slices(({"image": x[a:b]}, y[a:b])).batch(16)  # noqa: E731
    return data(0, 256).cache().shuffle(16, seed=0).repeat(), data(256, 320).cache()


def test_training_goes_past_the_warm_up_learns_and_says_why_it_stopped(quadrants):
    train, val = quadrants
    keras.utils.set_random_seed(0)
    model = networks.convnet((32, 32, 3), 4, HP)
    steps, epochs = 16, 20
    networks.compile_model(model, networks.schedule(3e-3, epochs, steps))
    stop = trainer.BestEpoch(patience=4, warmup=8)
    fit = model.fit(train, epochs=epochs, steps_per_epoch=steps, validation_data=val, callbacks=[stop], verbose=0)
    accuracies = fit.history["val_accuracy"]
    assert len(accuracies) >= 8  # no judgement in the warm-up, whatever validation loss did
    losses, best = fit.history["val_loss"], 0
    for epoch, (accuracy, loss) in enumerate(zip(accuracies, losses)):  # better accuracy, or as good and lower loss
        if accuracy > accuracies[best] + 0.005 or (accuracy >= accuracies[best] - 0.005 and loss < losses[best]):
            best = epoch
    assert stop.best_epoch == best and stop.best == pytest.approx(accuracies[best])
    assert accuracies[best] >= max(accuracies) - 0.005
    kept = model.evaluate(val, verbose=0)[1]
    assert kept == pytest.approx(accuracies[best], abs=1e-6)  # the best epoch's weights, not the last epoch's
    assert kept >= 0.6, accuracies  # chance is 0.25
    if len(accuracies) < epochs:
        assert len(accuracies) - max(best + 1, 8) == 4  # patience counts from the later of best and warm-up
        assert stop.reason == (f"stopped at epoch {len(accuracies)}: validation accuracy has not improved for "
                               f"{len(accuracies) - best - 1} epochs since epoch {best + 1} "
                               f"(best {accuracies[best]:.4f})")
    else:
        assert stop.reason == f"ran all {epochs} epochs; kept epoch {best + 1} (best validation accuracy " \
                              f"{accuracies[best]:.4f})"
    assert stop.rates[0] < stop.rates[2] and stop.rates[-1] < stop.rates[2]  # ramped up, then decayed


def test_the_warm_up_holds_early_stopping_back_even_when_nothing_improves():
    """A network that makes no progress still trains through the warm-up and `patience` epochs after it, even
    though its best epoch is the first."""
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 3), np.float32), rng.integers(0, 4, 64)
    data = tf.data.Dataset.from_tensor_slices(({"image": x}, y)).batch(16)
    model = networks.compile_model(networks.small_cnn((8, 8, 3), 4, HP), 0.0)  # a zero learning rate: no progress
    stop = trainer.BestEpoch(patience=2, warmup=5)
    fit = model.fit(data.repeat(), epochs=20, steps_per_epoch=4, validation_data=data, callbacks=[stop], verbose=0)
    assert len(fit.history["val_accuracy"]) == 7
    assert stop.reason.startswith("stopped at epoch 7: validation accuracy has not improved for 6 epochs since epoch 1")
