"""The signature contract, checked from saved_model.pb without loading the model."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from infra.rollout.signature import check_version, contract_problems, versions_on_disk
from tests.conftest import ROOT

COMMITTED = ROOT / "models" / "mnist"


def committed(version: int = 2) -> saved_model_pb2.SavedModel:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((COMMITTED / str(version) / "saved_model.pb").read_bytes())
    return saved_model


def problems_after(change) -> list[str]:
    saved_model = committed()
    change(saved_model.meta_graphs[0].signature_def["serving_default"])
    return contract_problems(saved_model.SerializeToString())


@pytest.mark.parametrize("version", [1, 2])
def test_the_committed_versions_meet_the_contract(version):
    assert check_version(COMMITTED / str(version)) == []


def test_a_float_input_is_named():
    def change(signature):
        signature.inputs["image"].dtype = types_pb2.DT_FLOAT

    assert problems_after(change) == ["input 'image' is DT_FLOAT, not DT_UINT8"]


def test_a_renamed_input_is_named():
    def change(signature):
        signature.inputs["pixels"].CopyFrom(signature.inputs["image"])
        del signature.inputs["image"]

    assert problems_after(change) == ["inputs are ['pixels'], not ['image']"]


def test_a_missing_output_and_a_wrong_shape_are_named():
    def change(signature):
        del signature.outputs["digit"]
        signature.outputs["probabilities"].tensor_shape.dim[1].size = 11

    assert problems_after(change) == [
        "output 'probabilities' has shape [-1, 11], not [-1, 10]",
        "no output 'digit'",
    ]


def test_an_unknown_rank_is_not_the_contract():
    def change(signature):
        signature.outputs["digit"].tensor_shape.unknown_rank = True
        del signature.outputs["digit"].tensor_shape.dim[:]

    assert problems_after(change) == ["output 'digit' has shape unknown, not [-1]"]


def test_no_serving_default_and_no_serve_tag_are_named():
    saved_model = committed()
    del saved_model.meta_graphs[0].signature_def["serving_default"]
    assert contract_problems(saved_model.SerializeToString()) == ["no 'serving_default' signature"]
    del saved_model.meta_graphs[0].meta_info_def.tags[:]
    assert contract_problems(saved_model.SerializeToString()) == ["no meta graph is tagged 'serve'"]


def test_garbage_and_a_missing_file_are_problems_not_crashes(tmp_path: Path):
    assert contract_problems(b"this is not a protobuf")[0].startswith("saved_model.pb is not")
    assert check_version(tmp_path)[0].startswith("cannot read")


def test_versions_on_disk_are_found_as_the_model_server_finds_them(tmp_path: Path):
    base = tmp_path / "models" / "mnist"
    for name in ("1", "2", ".tmp-3-abc", "notes"):
        (base / name).mkdir(parents=True)
    for name in ("1", ".tmp-3-abc"):
        (base / name / "saved_model.pb").write_bytes(b"")
    config = tmp_path / "models.config"
    assert versions_on_disk("/models/mnist", config, tmp_path / "models") == {1: base / "1"}
