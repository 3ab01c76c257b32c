"""TF Serving config messages that the tensorflow-serving-api wheel does not ship.

MonitoringConfig (monitoring_config.proto) and BatchingParameters
(session_bundle_config.proto) are built here from their field lists, with the
same package and field numbers, so their text-format files parse exactly as the
real server parses them.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers wrappers.proto in the pool)
)

_FILE_NAME = "digit_recognizer/serving/tf_serving_extra_config.proto"
_T = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _T.LABEL_OPTIONAL
_REPEATED = _T.LABEL_REPEATED

# (message, [(field, number, type, label, type_name)])
_MESSAGES = [
    (
        "PrometheusConfig",
        [
            ("enable", 1, _T.TYPE_BOOL, _OPTIONAL, None),
            ("path", 2, _T.TYPE_STRING, _OPTIONAL, None),
        ],
    ),
    (
        "MonitoringConfig",
        [
            (
                "prometheus_config",
                1,
                _T.TYPE_MESSAGE,
                _OPTIONAL,
                ".tensorflow.serving.PrometheusConfig",
            ),
        ],
    ),
    (
        "BatchingParameters",
        [
            ("max_batch_size", 1, _T.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
            ("batch_timeout_micros", 2, _T.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
            ("max_enqueued_batches", 3, _T.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
            ("num_batch_threads", 4, _T.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
            ("thread_pool_name", 5, _T.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.StringValue"),
            ("allowed_batch_sizes", 6, _T.TYPE_INT64, _REPEATED, None),
            ("pad_variable_length_inputs", 7, _T.TYPE_BOOL, _OPTIONAL, None),
        ],
    ),
]


@functools.cache
def _classes() -> dict[str, type]:
    pool = descriptor_pool.Default()
    try:
        descriptors = {
            name: pool.FindMessageTypeByName(f"tensorflow.serving.{name}") for name, _ in _MESSAGES
        }
    except KeyError:
        descriptors = pool.Add(_file_proto()).message_types_by_name
    return {name: message_factory.GetMessageClass(descriptors[name]) for name, _ in _MESSAGES}


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE_NAME,
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, fields in _MESSAGES:
        message = proto.message_type.add(name=message_name)
        for field_name, number, field_type, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
    return proto


def parse_monitoring_config(text: str) -> Any:
    """Parse a MonitoringConfig text proto (raises text_format.ParseError)."""
    return text_format.Parse(text, _classes()["MonitoringConfig"]())


def parse_batching_parameters(text: str) -> Any:
    """Parse a BatchingParameters text proto (raises text_format.ParseError)."""
    return text_format.Parse(text, _classes()["BatchingParameters"]())
