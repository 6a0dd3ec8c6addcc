"""The deployed model in onnxruntime, returning class scores and, optionally, the audited layer's output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from kernelscope.model.batching import Batching, run_outputs
from kernelscope.model.graph import GraphIndex, constant_value
from kernelscope.model.surgery.kernel_mask import MaskSite
from kernelscope.runtime import make_session


class OnnxEvaluator:
    """Runs the unmodified model (plus, when asked, the tensor at ``site`` as an extra output).

    Exposing an intermediate tensor only adds a graph output: the computation is the deployed one.
    Quantized (8-bit) site tensors are returned dequantized, so distances are in real units.
    """

    def __init__(
        self,
        batching: Batching,
        image_input: str,
        output: str,
        site: MaskSite | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.batching = batching
        self.image_input = image_input
        self.output = output
        self.site = site
        proto = onnx.ModelProto()
        proto.CopyFrom(batching.proto)
        self._dequant: tuple[np.ndarray, np.ndarray] | None = None
        if site is not None and site.tensor not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(site.tensor, site.elem_type, None))
        if site is not None and site.quant_params is not None:
            index = GraphIndex.build(batching.proto.graph)
            scale, zero = (constant_value(index, name)[0] for name in site.quant_params)
            self._dequant = (np.asarray(scale, np.float32), np.asarray(zero, np.float32))
        self.session = make_session(proto, providers, threads)
        self._outputs = [output] + ([site.tensor] if site is not None else [])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class scores (N, K) and the site tensor (N, C, H, W) as float32 (``None`` without a site)."""
        results = run_outputs(self.session, self.batching, self.image_input, x, self._outputs)
        scores = results[0].reshape(x.shape[0], -1)
        if self.site is None:
            return scores, None
        site = results[1].astype(np.float32)
        if self._dequant is not None:
            scale, zero = self._dequant
            site = (site - zero) * scale
        return scores, site
