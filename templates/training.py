"""Local, single-node canonical training of a task definition (`bws train`).

Supervised templates (dnn, dnn_regressor, cnn) run the engine's compiled
iteration over the task's scheduled batches. The GAN template runs one
canonical iteration per batch made of the engine's composable pieces: a
discriminator step on real and generated examples, then a generator step
through the (updated) discriminator, non-saturating loss; all integer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bws import engine
from bws.engine import ops
from bws.engine.iteration import add_trees, backward, is_loss_fused, loss_input, seed_key
from bws.spec import constants as K

from .canonical import ACT_SCALE, CanonicalModel
from .errors import DatasetError
from .task import TaskData, TaskDefinition, task_data

# The generator's initial weights are drawn with init_seed + GENERATOR_SEED_OFFSET,
# so generator and discriminator never share random streams.
GENERATOR_SEED_OFFSET = 1 << 32
SAMPLE_GRID = 8  # the exported grid of generated images is SAMPLE_GRID x SAMPLE_GRID


@dataclass
class TrainingResult:
    template: str
    iteration_losses: dict[str, list[float]] = field(default_factory=dict)  # per iteration, by curve name
    test_metrics: dict[str, float] = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # the trained (fixed-point) params, by network name
    samples: np.ndarray | None = None  # GAN: generated examples, float


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="it", disable=not enabled)


def train_supervised(task: TaskDefinition, data: TaskData, progress: bool = True) -> TrainingResult:
    model = CanonicalModel(task.model, seed=task.hyperparameters["init_seed"])
    dataset = task.dataset
    losses = []
    with _progress(task.hyperparameters["iterations"], progress, f"train {task.template}") as bar:
        for epoch, batch in data.batches(dataset["batch_size"], dataset["schedule"]["seed"], task.hyperparameters["epochs"]):
            values = jax.device_get(model.step(batch))
            losses.append(int(values["loss_sum"]) / int(values["count"]) / ACT_SCALE)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
    classifier = task.model["loss"]["type"] != "mse"
    metrics = model.evaluate_quantized(data.test_x, data.test_y, metrics=["accuracy"] if classifier else [])
    return TrainingResult(task.template, {"loss": losses}, {f"test_{k}": v for k, v in metrics.items()},
                          {"model": jax.device_get(model.state["params"])})


# ---------------------------------------------------------------------------
# GAN
# ---------------------------------------------------------------------------
def _noise(key, phase: int, step, shape):
    """Uniform noise in [-1, 1) with ACT_FRAC_BITS, from threefry."""
    bits = ops.random_bits(ops.derive_key(key, K.RANDOM_TAG_GAN_NOISE, phase, step), shape)
    return (bits >> (32 - K.ACT_FRAC_BITS - 1)).astype(jnp.int32) - (1 << K.ACT_FRAC_BITS)


class CanonicalGAN:
    """Generator G and discriminator D (its output is the logit of "real",
    loss sigmoid binary cross-entropy), trained in alternation."""

    def __init__(self, generator: dict[str, Any], discriminator: dict[str, Any], latent_dim: int, seed: int):
        self.g_spec = engine.ModelSpec.from_dict(generator)
        self.d_spec = engine.ModelSpec.from_dict(discriminator)
        self.latent_dim = latent_dim
        g_state = engine.init_state(self.g_spec, seed + GENERATOR_SEED_OFFSET)
        d_state = engine.init_state(self.d_spec, seed)
        self.state = {"g": g_state["params"], "g_opt": g_state["opt"], "d": d_state["params"],
                      "d_opt": d_state["opt"], "step": jnp.asarray(0, jnp.int32), "seed": seed_key(seed)}
        self._iteration = jax.jit(self._iterate)
        self._generate = jax.jit(lambda g, z: engine.forward(self.g_spec, g, z)[0])

    def _iterate(self, state, real):
        g_spec, d_spec = self.g_spec, self.d_spec
        step, key = state["step"], state["seed"]
        batch = real.shape[0]
        one = 1 << K.ACT_FRAC_BITS
        # Discriminator: real examples are labelled 1, generated ones 0.
        fake, _ = engine.forward(g_spec, state["g"], _noise(key, 0, step, (batch, self.latent_dim)))
        d_batch = {"x": jnp.concatenate([real, fake]),
                   "y": jnp.concatenate([jnp.full((batch, 1), one, jnp.int32), jnp.zeros((batch, 1), jnp.int32)])}
        d_grads, d_metrics = engine.gradients(d_spec, state["d"], d_batch, seed=key, step=step)
        d_update, d_opt = ops.optimizer_step(d_spec.optimizer, d_grads, state["d_opt"], step)
        d_params = add_trees(state["d"], d_update)
        # Generator: make the updated discriminator call generated examples real.
        fake, g_caches = engine.forward(g_spec, state["g"], _noise(key, 1, step, (batch, self.latent_dim)),
                                        train=True, seed=key, step=step)
        out, d_caches = engine.forward(d_spec, d_params, fake, train=True, seed=key, step=step)
        delta, g_metrics = ops.loss_forward_backward(d_spec.loss["type"], loss_input(d_spec, out, d_caches),
                                                     jnp.full((batch, 1), one, jnp.int32))
        delta, _, _ = backward(d_spec, d_params, d_caches, delta, fused=is_loss_fused(d_spec), through_input=True)
        _, g_grads, _ = backward(g_spec, state["g"], g_caches, delta, fused=False)
        g_update, g_opt = ops.optimizer_step(g_spec.optimizer, g_grads, state["g_opt"], step)
        new_state = {"g": add_trees(state["g"], g_update), "g_opt": g_opt, "d": d_params, "d_opt": d_opt,
                     "step": step + 1, "seed": key}
        return new_state, {"d_loss_sum": d_metrics["loss_sum"], "g_loss_sum": g_metrics["loss_sum"]}

    def step(self, real: np.ndarray) -> tuple[float, float]:
        """One iteration on a batch of real examples; (D loss, G loss)."""
        self.state, metrics = self._iteration(self.state, jnp.asarray(real))
        metrics = jax.device_get(metrics)
        return (int(metrics["d_loss_sum"]) / (2 * real.shape[0]) / ACT_SCALE,
                int(metrics["g_loss_sum"]) / real.shape[0] / ACT_SCALE)

    def generate(self, count: int) -> np.ndarray:
        """`count` generated examples (float), from a fixed noise stream (phase 2)."""
        z = _noise(self.state["seed"], 2, jnp.asarray(0, jnp.uint32), (count, self.latent_dim))
        return (np.asarray(jax.device_get(self._generate(self.state["g"], z)), np.float64) / ACT_SCALE).astype(np.float32)


def train_gan(task: TaskDefinition, data: TaskData, progress: bool = True) -> TrainingResult:
    hyper, dataset = task.hyperparameters, task.dataset
    gan = CanonicalGAN(task.generator, task.model, hyper["latent_dim"], hyper["init_seed"])
    d_losses, g_losses = [], []
    with _progress(hyper["iterations"], progress, "train gan") as bar:
        for epoch, batch in data.batches(dataset["batch_size"], dataset["schedule"]["seed"], hyper["epochs"]):
            d_loss, g_loss = gan.step(batch["x"])
            d_losses.append(d_loss)
            g_losses.append(g_loss)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, d_loss=f"{d_loss:.3f}", g_loss=f"{g_loss:.3f}")
    samples = gan.generate(SAMPLE_GRID * SAMPLE_GRID)
    params = jax.device_get({"generator": gan.state["g"], "discriminator": gan.state["d"]})
    # How real the trained discriminator finds held-out real digits vs generated ones.
    real_score = engine.predict(gan.d_spec, gan.state["d"], data.test_x)
    fake_score = engine.predict(gan.d_spec, gan.state["d"], engine.quantize_inputs(samples))
    metrics = {"d_real_logit_mean": float(np.mean(np.asarray(real_score))) / ACT_SCALE,
               "d_fake_logit_mean": float(np.mean(np.asarray(fake_score))) / ACT_SCALE}
    return TrainingResult("gan", {"discriminator": d_losses, "generator": g_losses}, metrics, params, samples)


def train_task(task: TaskDefinition, data_dir: str | None = None, progress: bool = True,
               test_file: str | None = None) -> TrainingResult:
    """Rebuild the task's data (checked against its commitments) and train it;
    a withheld test split is read from `test_file` (the client's)."""
    data = task_data(task, data_dir, test_file)
    if not data.has_test:
        raise DatasetError("this task's test split is withheld by its client: give the client's --test-file "
                           "to train and test it locally")
    if task.template == "gan":
        return train_gan(task, data, progress)
    return train_supervised(task, data, progress)


# ---------------------------------------------------------------------------
# Figures (matplotlib, Agg: no display needed)
# ---------------------------------------------------------------------------
def save_loss_curve(curves: dict[str, list[float]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(np.arange(len(smooth)) + window - 1, smooth, label=f"{name} (moving mean of {window})")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_image_grid(samples: np.ndarray, image_shape: tuple[int, int], value_range: tuple[float, float],
                    path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(np.sqrt(samples.shape[0]))
    figure, axes = plt.subplots(side, side, figsize=(side, side))
    for axis, sample in zip(np.ravel(axes), samples):
        axis.imshow(np.reshape(sample, image_shape), cmap="gray_r", vmin=value_range[0], vmax=value_range[1])
        axis.axis("off")
    figure.suptitle(title)
    figure.savefig(path, dpi=80)
    plt.close(figure)
