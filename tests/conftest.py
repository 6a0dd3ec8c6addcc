"""Shared fixtures. ``tests/`` is on sys.path (pytest's prepend import mode), so helpers import plainly."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def built_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zoo.ZooModel]:
    """The whole export-style zoo (tests/zoo.py), built once per session."""
    return zoo.build_zoo(tmp_path_factory.mktemp("zoo"))
