"""SavedModel export with the contract signature, atomically, with TF Serving warmup records.

The signature is the contract of recognizer.contract (docs/architecture.md, "Model
signature"): `serving_default` takes `image` uint8 [-1, 28, 28] (white ink on black) and
returns `probabilities` float32 [-1, 10] and `digit` int64 [-1]. The model server
watches the base path, so a version directory must appear whole: we write to a hidden
temporary directory beside it and rename it into place.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from recognizer import contract

WARMUP_FILE = "tf_serving_warmup_requests"
_IMAGE = contract.INPUTS[contract.IMAGE]
IMAGE_SPEC = tf.TensorSpec(
    [None if size == -1 else size for size in _IMAGE.shape], _IMAGE.dtype, name=contract.IMAGE
)


def export_version(
    model: keras.Model,
    base_path: Path,
    version: int,
    warmup_images: np.ndarray,
    model_name: str = contract.MODEL_NAME,
) -> Path:
    """Write `model` as `base_path/<version>/` and return that path; refuse to overwrite."""
    target = base_path / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists: versions are immutable, export a new number")
    base_path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_path))
    try:
        _write_saved_model(model, staging)
        _write_warmup(staging / "assets.extra" / WARMUP_FILE, warmup_images, model_name)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_saved_model(model: keras.Model, path: Path) -> None:
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(tf.cast(image, tf.float32), training=False)
        return {contract.PROBABILITIES: probabilities, contract.DIGIT: tf.argmax(probabilities, 1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(contract.SIGNATURE, serve, input_signature=[IMAGE_SPEC])
    # ExportArchive writes into an empty directory of its own choosing.
    shutil.rmtree(path)
    archive.write_out(str(path), verbose=False)


def _write_warmup(path: Path, images: np.ndarray, model_name: str) -> None:
    """One request per batch size the function sends most, so the first real call is fast."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in (1, 8, 64):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=contract.SIGNATURE)
            )
            pixels = tf.make_tensor_proto(images[:batch], _IMAGE.dtype)
            request.inputs[contract.IMAGE].CopyFrom(pixels)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
