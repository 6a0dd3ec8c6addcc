"""Graph-surgery pass: keep only what one output needs."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from kernelscope.errors import ModelError
from kernelscope.model.surgery import graph_edit


def prune_to_output(proto: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """A copy of ``proto`` with ``output`` as its only output and every node it does not need removed.

    Other heads of a multi-output model (and any ops they use) then neither cost time nor block the
    PyTorch mirror. Opset, IR version and metadata are kept.
    """
    with graph_edit("prune"):
        graph = gs.import_onnx(proto)
        wanted = [t for t in graph.outputs if t.name == output]
        if not wanted:
            raise ModelError(f"the model has no output named {output!r}")
        graph.outputs = wanted
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        pruned = gs.export_onnx(graph, do_type_check=False)
    pruned.ir_version = proto.ir_version
    del pruned.opset_import[:]
    pruned.opset_import.extend(proto.opset_import)
    del pruned.metadata_props[:]
    pruned.metadata_props.extend(proto.metadata_props)
    return pruned
