"""Output files: atomic, and created with the permissions any new file would get (not owner-only)."""

from __future__ import annotations

import os
import stat

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernelscope.io import atomic_write_text, save_model_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_follows_the_umask(tmp_path, umask_022):
    target = tmp_path / "report.html"
    atomic_write_text(target, "<p>ok</p>")
    assert target.read_text() == "<p>ok</p>"
    assert _mode(target) == 0o644  # readable by others, as a plain open() would make it
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


def test_model_with_external_data_follows_the_umask(tmp_path, umask_022):
    import numpy as np

    weight = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    written = save_model_atomic(helper.make_model(graph), tmp_path / "m.onnx", external_data=True)
    assert {p.name for p in written} == {"m.onnx", "m.onnx.data"}
    assert all(_mode(p) == 0o644 for p in written)
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
