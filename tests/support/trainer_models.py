"""Tiny two-tower models and data for the trainer tests, the bench and the demo.

``tf.keras`` decides the flavour: Keras 3 by default, tf-keras when the process
started with TF_USE_LEGACY_KERAS=1 (then ``tfrs_retrieval_model`` is available).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

N_USERS = 100
N_ITEMS = 100
DIM = 8


def interactions(n: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (user, item, clicked) triples; clicks depend on ids so there is something to learn."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n).astype("int32")
    items = rng.integers(0, N_ITEMS, n).astype("int32")
    clicked = ((users + items) % 3 == 0).astype("float32")
    return {"user_id": users, "item_id": items, "clicked": clicked}


def keras_dataset(n: int = 256, batch: int = 32, seed: int = 0) -> tf.data.Dataset:
    """``({"user_id", "item_id"}, clicked)`` batches for a Keras two-tower model."""
    data = interactions(n, seed)
    features = {"user_id": data["user_id"], "item_id": data["item_id"]}
    return tf.data.Dataset.from_tensor_slices((features, data["clicked"])).batch(batch)


def tfrs_dataset(n: int = 256, batch: int = 32, seed: int = 0) -> tf.data.Dataset:
    """Features dicts (``user_id``, ``item_id``), as a TensorFlow Recommenders model trains on."""
    data = interactions(n, seed)
    return tf.data.Dataset.from_tensor_slices({"user_id": data["user_id"], "item_id": data["item_id"]}).batch(batch)


def _tower(keras: Any, rows: int, dim: int, name: str) -> Any:
    return keras.Sequential(
        [keras.layers.Embedding(rows, dim), keras.layers.Dense(dim, activation="relu"), keras.layers.Dense(dim)],
        name=name,
    )


def two_tower_keras(
    rows: tuple[int, int] = (N_USERS, N_ITEMS), dim: int = DIM, learning_rate: float = 0.05, optimizer: str = "adagrad"
) -> Any:
    """A compiled Keras two-tower click model with ``query_model`` and ``candidate_model``.

    (Keras 3's Adagrad fails on NaN sparse gradients, so the NaN test uses ``optimizer="sgd"``.)
    """
    keras = tf.keras

    class TwoTower(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.query_model = _tower(keras, rows[0], dim, "query")
            self.candidate_model = _tower(keras, rows[1], dim, "candidate")

        def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
            query = self.query_model(features["user_id"])
            candidate = self.candidate_model(features["item_id"])
            return tf.reduce_sum(query * candidate, axis=1)

    model = TwoTower()
    model.compile(
        optimizer={"adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD}[optimizer](learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    model({"user_id": tf.zeros([1], tf.int32), "item_id": tf.zeros([1], tf.int32)})  # build
    return model


def tfrs_retrieval_model(dim: int = DIM, learning_rate: float = 0.1) -> Any:
    """A compiled tfrs.Model retrieval model (in-batch softmax, top-k metrics on validation)."""
    import tensorflow_recommenders as tfrs

    keras = tf.keras
    candidates = tf.data.Dataset.range(N_ITEMS).map(lambda i: tf.cast(i, tf.int32)).batch(50)

    class Retrieval(tfrs.Model):
        def __init__(self) -> None:
            super().__init__()
            self.query_model = _tower(keras, N_USERS, dim, "query")
            self.candidate_model = _tower(keras, N_ITEMS, dim, "candidate")
            self.task = tfrs.tasks.Retrieval(
                metrics=tfrs.metrics.FactorizedTopK(candidates=candidates.map(self.candidate_model), ks=(5, 10))
            )

        def compute_loss(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
            query = self.query_model(features["user_id"])
            candidate = self.candidate_model(features["item_id"])
            return self.task(query, candidate, compute_metrics=not training)

    model = Retrieval()
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate))
    return model


def in_batch_softmax_loss(query: tf.Tensor, candidate: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy of each query against every candidate of the batch (the diagonal is the positive)."""
    scores = tf.matmul(query, candidate, transpose_b=True)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.range(tf.shape(scores)[0]), scores))


def two_tower_custom_step(override_compute_loss: bool = False, learning_rate: float = 0.05) -> Any:
    """The usual Keras 3 two-tower model: a custom ``train_step`` with an in-batch softmax, ``compile(optimizer=...)``, no loss.

    With ``override_compute_loss`` the loss lives in ``compute_loss(x, y, y_pred, sample_weight, training)``
    (Keras 3's signature), which ``train_step`` calls; otherwise it is computed inside ``train_step``.
    """
    keras = tf.keras

    class TwoTower(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.query_model = _tower(keras, N_USERS, DIM, "query")
            self.candidate_model = _tower(keras, N_ITEMS, DIM, "candidate")

        def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
            return (self.query_model(features["user_id"], training=training),
                    self.candidate_model(features["item_id"], training=training))

        def train_step(self, data: Any) -> dict[str, tf.Tensor]:
            features = data[0] if isinstance(data, tuple) else data
            with tf.GradientTape() as tape:
                towers = self(features, training=True)
                if override_compute_loss:
                    loss = self.compute_loss(x=features, y=None, y_pred=towers, sample_weight=None, training=True)
                else:
                    loss = in_batch_softmax_loss(*towers)
            gradients = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
            return {"loss": loss}

    if override_compute_loss:
        def compute_loss(self: Any, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                         training: bool = True) -> tf.Tensor:
            return in_batch_softmax_loss(*y_pred)

        TwoTower.compute_loss = compute_loss
    model = TwoTower()
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate))
    model({"user_id": tf.zeros([1], tf.int32), "item_id": tf.zeros([1], tf.int32)})  # build
    return model
