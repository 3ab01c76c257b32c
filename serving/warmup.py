"""Replaying assets.extra/tf_serving_warmup_requests on load, as TF Serving does.

The file is a TFRecord of PredictionLog protos (at most 1,000). Running them
before a version becomes AVAILABLE takes the slow first call off the first
user; a record that fails fails the load, as in TF Serving.
"""

from __future__ import annotations

import logging

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.errors import ServingError
from serving.servable import Servable

WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000

log = logging.getLogger(__name__)


def run_warmup(servable: Servable) -> int:
    """Replay the warmup records of a servable; returns how many were run."""
    path = servable.path.joinpath(*WARMUP_PATH)
    if not path.is_file():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        if count >= MAX_WARMUP_RECORDS:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
            )
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind != "predict_log":
            log.warning("Skipping a %s warmup record: the dev server replays predict only", kind)
            continue
        request = entry.predict_log.request
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        servable.run(request.model_spec.signature_name, inputs)
        count += 1
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        servable.path,
        count,
    )
    return count
