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
        extra_sites: Sequence[MaskSite] = (),
    ) -> None:
        self.batching = batching
        self.image_input = image_input
        self.output = output
        self.site = site
        self.extra_sites = list(extra_sites)  # further layers' tensors (every layer's targeting from one run)
        proto = onnx.ModelProto()
        proto.CopyFrom(batching.proto)
        sites = [site, *self.extra_sites] if site is not None else list(self.extra_sites)
        present = {o.name for o in proto.graph.output}
        for entry in sites:
            if entry.tensor not in present:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(entry.tensor, entry.elem_type, None))
                present.add(entry.tensor)
        index = GraphIndex.build(batching.proto.graph) if any(e.quant_params for e in sites) else None
        self._dequant: list[tuple[np.ndarray, np.ndarray] | None] = []
        for entry in sites:
            if entry.quant_params is None:
                self._dequant.append(None)
                continue
            scale, zero = (constant_value(index, name)[0] for name in entry.quant_params)
            self._dequant.append((np.asarray(scale, np.float32), np.asarray(zero, np.float32)))
        self.session = make_session(proto, providers, threads)
        self._outputs = [output] + [entry.tensor for entry in sites]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class scores (N, K) and the site tensor (N, C, H, W) as float32 (``None`` without a site)."""
        scores, sites = self.run_all(x)
        return scores, (sites[0] if self.site is not None else None)

    def run_all(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Class scores and ``[site, *extra_sites]`` tensors as float32 (the first ``None`` without a site)."""
        results = run_outputs(self.session, self.batching, self.image_input, x, self._outputs)
        scores = results[0].reshape(x.shape[0], -1)
        tensors = []
        for value, dequant in zip(results[1:], self._dequant, strict=True):
            value = value.astype(np.float32)
            if dequant is not None:
                scale, zero = dequant
                value = (value - zero) * scale
            tensors.append(value)
        if self.site is None:
            tensors.insert(0, None)
        return scores, tensors
