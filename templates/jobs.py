"""Job templates: DNN (classifier, regressor), CNN and GAN.

Each template knows which loss and targets its task trains with, has a default
Keras model for 8x8 digit-sized inputs, and turns a (user's or default) Keras
model plus a dataset into a task definition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import keras
from .errors import TemplateError, UnsupportedKerasFeature
from .task import TaskDefinition, build_task

layers = keras.layers


@dataclass(frozen=True)
class JobTemplate:
    name: str
    description: str
    input_range: tuple[float, float]
    default_epochs: int
    default_batch_size: int
    default_learning_rate: float
    # int8 slices per fixed-point number. With 3 (~23 bits) the classifiers' test
    # accuracy is within one or two test examples of float32 on every seed
    # (bench/accuracy.py); with 2 (~15 bits) single runs fell up to 2 pp short.
    default_slices: int = 3


TEMPLATES: dict[str, JobTemplate] = {
    "dnn": JobTemplate("dnn", "dense classifier (softmax cross-entropy on integer labels)", (0.0, 1.0), 20, 32, 0.003),
    "dnn_regressor": JobTemplate("dnn_regressor", "dense regressor (mean squared error on the label scaled to [0, 1])",
                                 (0.0, 1.0), 20, 32, 0.003),
    "cnn": JobTemplate("cnn", "convolutional classifier (softmax cross-entropy on integer labels)", (0.0, 1.0), 15, 32, 0.003),
    "gan": JobTemplate("gan", "generator and discriminator trained in alternation (non-saturating GAN)",
                       (-1.0, 1.0), 30, 32, 0.001, default_slices=2),
}


def template(name: str) -> JobTemplate:
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template {name!r}; templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def default_model(name: str, input_shape: tuple[int, ...] = (8, 8, 1), num_classes: int = 10,
                  latent_dim: int = 16) -> keras.Model | tuple[keras.Model, keras.Model]:
    """The template's default Keras model for inputs of `input_shape` (for the
    GAN: the (generator, discriminator) pair)."""
    size = 1
    for d in input_shape:
        size *= d
    if name == "dnn":
        return keras.Sequential([keras.Input(shape=(size,)), layers.Dense(128, activation="relu"),
                                 layers.Dense(64, activation="relu"), layers.Dense(num_classes, activation="softmax")],
                                name="dnn")
    if name == "dnn_regressor":
        return keras.Sequential([keras.Input(shape=(size,)), layers.Dense(64, activation="relu"),
                                 layers.Dense(32, activation="relu"), layers.Dense(1)], name="dnn_regressor")
    if name == "cnn":
        return keras.Sequential([
            keras.Input(shape=tuple(input_shape)),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ], name="cnn")
    if name == "gan":
        generator = keras.Sequential([keras.Input(shape=(latent_dim,)), layers.Dense(64), layers.LeakyReLU(0.2),
                                      layers.Dense(128), layers.LeakyReLU(0.2),
                                      layers.Dense(size, activation="tanh")], name="generator")
        discriminator = keras.Sequential([keras.Input(shape=(size,)), layers.Dense(128), layers.LeakyReLU(0.2),
                                          layers.Dense(64), layers.LeakyReLU(0.2), layers.Dense(1)],
                                         name="discriminator")
        return generator, discriminator
    raise TemplateError(f"unknown template {name!r}; templates: {', '.join(TEMPLATES)}")


def compile_for(name: str, model: keras.Model, optimizer: str = "adam", learning_rate: float | None = None,
                momentum: float = 0.0, slices: int | None = None) -> None:
    """Compile `model` with the template's loss and the chosen optimizer."""
    job = template(name)
    slices = job.default_slices if slices is None else slices
    learning_rate = job.default_learning_rate if learning_rate is None else learning_rate
    if optimizer == "adam":
        # GANs train stably with a short first-moment memory (Radford et al. 2015).
        opt = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.5 if name == "gan" else 0.9)
    elif optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    else:
        raise UnsupportedKerasFeature(f"optimizer {optimizer!r} is not supported; supported: adam, sgd")
    if name in ("dnn", "cnn"):
        from_logits = model.last_activation != "softmax"
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    elif name == "dnn_regressor":
        loss = keras.losses.MeanSquaredError()
    elif model.last_activation == "tanh":
        # The generator learns through the discriminator's loss; the engine
        # description still names a loss, unused by the GAN iteration.
        loss = keras.losses.MeanSquaredError()
    else:  # the discriminator's output is the logit of "real"
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=loss, metrics=[] if name in ("dnn_regressor", "gan") else ["accuracy"],
                  slices=slices)


def make_task(name: str, dataset: str = "digits", model: Any = None, *, epochs: int | None = None,
              batch_size: int | None = None, optimizer: str = "adam", learning_rate: float | None = None,
              momentum: float = 0.0, slices: int | None = None, schedule_seed: int = 0, init_seed: int = 0,
              latent_dim: int = 16, data_dir: str | None = None, test_file: str | None = None) -> TaskDefinition:
    """A task definition for template `name` on `dataset`. `model` is a Keras
    model (for the GAN a (generator, discriminator) pair); the template's
    default model when None. `test_file`: the client's own test split (.npz
    with `x` and `y`), withheld from the network until evaluation."""
    job = template(name)
    if model is None:
        from . import datasets

        sample = datasets.load_split(dataset, "test", data_dir=data_dir)
        model = default_model(name, tuple(sample.inputs.shape[1:]), sample.num_classes or 10, latent_dim)
    if name == "gan":
        if not isinstance(model, tuple) or len(model) != 2:
            raise TemplateError("the gan template needs a (generator, discriminator) pair of models")
        generator, discriminator = model
        for network in (generator, discriminator):
            compile_for(name, network, optimizer, learning_rate, momentum, slices)
        return build_task(name, discriminator.engine_description(), dataset, batch_size=batch_size or job.default_batch_size,
                          epochs=epochs or job.default_epochs, schedule_seed=schedule_seed, init_seed=init_seed,
                          input_range=job.input_range, generator=generator.engine_description(),
                          latent_dim=generator.input_shape[1], data_dir=data_dir, test_file=test_file)
    if not isinstance(model, keras.Model):
        raise TemplateError(f"template {name} needs a Keras model, got {type(model).__name__}")
    compile_for(name, model, optimizer, learning_rate, momentum, slices)
    return build_task(name, model.engine_description(), dataset, batch_size=batch_size or job.default_batch_size,
                      epochs=epochs or job.default_epochs, schedule_seed=schedule_seed, init_seed=init_seed,
                      input_range=job.input_range, data_dir=data_dir, test_file=test_file)
