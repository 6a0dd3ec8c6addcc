"""Shared fixtures. ``tests/`` is on sys.path (pytest's prepend import mode), so helpers import plainly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import zoo


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Two test processes' worth of threads on a 2-core machine makes tiny trainings hundreds of times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _backend_flags() -> list[tuple[object, str]]:
    """The process-wide ``torch.backends`` switches :func:`kernelscope.devices.exact_float32_on_cuda` sets."""
    cudnn = torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        # torch >= 2.9. Never read the legacy allow_tf32 here: torch raises once conv and RNN precisions differ.
        precision = [(cudnn.conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")]
    else:
        precision = [(cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]
    return [*precision, (cudnn, "deterministic"), (cudnn, "benchmark")]


@pytest.fixture(autouse=True)
def _restore_backend_flags() -> Iterator[None]:
    """Once CUDA is chosen, ``torch_device`` changes torch's precision and cuDNN switches for the whole process;
    put each back after every test (any test that makes CUDA "available" reaches it), so no other test inherits
    them. (Not monkeypatch: these switches are ``__getattr__``/``__setattr__`` hooks of plain objects, and its
    undo would try to delete them.)"""
    saved = [(owner, name, getattr(owner, name)) for owner, name in _backend_flags()]
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


@pytest.fixture(scope="session")
def built_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zoo.ZooModel]:
    """The whole export-style zoo (tests/zoo.py), built once per session."""
    return zoo.build_zoo(tmp_path_factory.mktemp("zoo"))
