"""The tiny two-tower retrieval model ``metrics-ingest demo`` trains.

Synthetic users and items with hidden tastes (made here, no download); a
query tower and a candidate tower (Keras 3, the Keras TensorFlow 2.21 ships)
trained with the in-batch softmax loss TensorFlow Recommenders' retrieval
task uses: in a batch of B (user, item) pairs, the logits are the B x B
query-candidate scores and each user's label is its own item's position.
Seconds, not minutes, on two cores.

Importing this module imports TensorFlow (slow): import it only to train.

Example::

    data = make_data()
    model = TwoTowerModel(data.num_users, data.num_items)
    compile_model(model)
    model.fit(data.train, validation_data=data.validation, epochs=6, validation_freq=2)
    print(recall_at_k(model, data, k=10))
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402 - after quieting TensorFlow's C++ logging
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH = 64


@dataclasses.dataclass
class DemoData:
    """Synthetic interactions: tf.data pipelines of ``({"user_id", "item_id"}, labels)``."""

    num_users: int
    num_items: int
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test_users: np.ndarray
    test_items: np.ndarray
    probe_batch: tuple


def make_data(num_users: int = 300, num_items: int = 120, interactions: int = 6400, seed: int = 7) -> DemoData:
    """Users pick items by a hidden taste (a softmax over latent dot products)."""
    rng = np.random.default_rng(seed)
    user_taste = rng.normal(size=(num_users, 4))
    item_traits = rng.normal(size=(num_items, 4))
    logits = 2.0 * user_taste @ item_traits.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    users = rng.integers(0, num_users, size=interactions)
    items = np.array([rng.choice(num_items, p=probs[u]) for u in users])
    n_train = int(interactions * 0.75) // BATCH * BATCH
    n_val = (int(interactions * 0.125) // BATCH) * BATCH

    def pipeline(u: np.ndarray, i: np.ndarray, shuffle: bool) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices({"user_id": u.astype("int32"), "item_id": i.astype("int32")})
        if shuffle:
            ds = ds.shuffle(len(u), seed=seed, reshuffle_each_iteration=True)
        # The label of row r in a batch is r: its own item among the batch's candidates.
        return ds.batch(BATCH, drop_remainder=True).map(lambda f: (f, tf.range(BATCH))).prefetch(2)

    train = pipeline(users[:n_train], items[:n_train], shuffle=True)
    validation = pipeline(users[n_train : n_train + n_val], items[n_train : n_train + n_val], shuffle=False)
    probe_batch = next(iter(train))
    return DemoData(
        num_users=num_users,
        num_items=num_items,
        train=train,
        validation=validation,
        test_users=users[n_train + n_val :],
        test_items=items[n_train + n_val :],
        probe_batch=probe_batch,
    )


class TwoTowerModel(keras.Model):
    """A query tower (user id -> vector) and a candidate tower (item id -> vector).

    Args:
        num_users: number of user ids (int).
        num_items: number of item ids (int).
        dim: embedding size of both towers (int, default 16).

    Example::

        model = TwoTowerModel(300, 120)
        logits = model({"user_id": users, "item_id": items})   # (B, B) scores
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 16, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.query_model = keras.Sequential(
            [keras.layers.Embedding(num_users, 32), keras.layers.Dense(dim)], name="query"
        )
        self.candidate_model = keras.Sequential(
            [keras.layers.Embedding(num_items, 32), keras.layers.Dense(dim)], name="candidate"
        )

    def call(self, inputs: dict) -> tf.Tensor:
        queries = self.query_model(inputs["user_id"])
        candidates = self.candidate_model(inputs["item_id"])
        return keras.ops.matmul(queries, keras.ops.transpose(candidates))


def compile_model(model: keras.Model, learning_rate: float = 0.01) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # In-batch recall: is the user's own item in the top 5 of the batch's candidates?
        metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="in_batch_recall_at_5")],
    )


def recall_at_k(model: TwoTowerModel, data: DemoData, k: int = 10) -> float:
    """Held-out recall@k over the whole item catalogue."""
    queries = model.query_model(data.test_users.astype("int32"))
    candidates = model.candidate_model(np.arange(data.num_items, dtype="int32"))
    scores = keras.ops.convert_to_numpy(keras.ops.matmul(queries, keras.ops.transpose(candidates)))
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([item in row for item, row in zip(data.test_items, top)]))

