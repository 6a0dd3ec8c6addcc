"""Fuzzing ``inspect`` with mutated models (hypothesis): whatever the file holds, the run ends cleanly.

The property (tests/mutations.py ``run_cli``): exit code 0, 1 or 2, never a traceback, exactly one
``kernelscope: error:`` line on failure, and no file left behind. On top of it, an error must come from a
check that foresaw it, not from the CLI's last-resort ``unexpected <Exception>`` handler. Longer runs:
``python bench/fuzz.py --cases 10000``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import conv_classifier, random_npz
from mutations import HypothesisChooser, Outcome, inspect_argv, mutate, mutate_bytes, mutate_proto, run_cli

BASE = conv_classifier(out_channels=4, classes=4).SerializeToString()

#: Unforeseen errors whose fix lies in a file another change owns; each entry says what the fix is.

FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same cases on every CI run; bench/fuzz.py explores further
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny matching .npz; each example overwrites ``model.onnx`` in it."""
    folder = tmp_path_factory.mktemp("fuzz")
    random_npz(folder / "data.npz", n=12, size=8, channels=3, classes=4)
    return folder


def _check(folder: Path, mutated: bytes, steps: list[str], *, attack: bool) -> Outcome:
    model = folder / "model.onnx"
    model.write_bytes(mutated)
    outcome = run_cli(inspect_argv(model, folder / "data.npz", attack=attack))
    assert outcome.crash is None, (steps, outcome.crash, outcome.stderr)
    assert not outcome.unforeseen, (steps, outcome.stderr)  # every failure is a foreseen, explained error
    assert sorted(p.name for p in folder.iterdir()) == ["data.npz", "model.onnx"], "a run left a file behind"
    return outcome


def test_the_base_model_passes(workdir: Path) -> None:
    """The unmutated model runs cleanly with and without the attack (so mutations start from a valid file)."""
    for attack in (False, True):
        assert _check(workdir, BASE, [], attack=attack).code == 0


@settings(FUZZ_SETTINGS, max_examples=400)
@given(data=st.data())
def test_protobuf_mutations_end_cleanly(workdir: Path, data: st.DataObject) -> None:
    mutated, steps = mutate_proto(BASE, HypothesisChooser(data))
    _check(workdir, mutated, steps, attack=False)


@settings(FUZZ_SETTINGS, max_examples=250)
@given(data=st.data())
def test_byte_mutations_end_cleanly(workdir: Path, data: st.DataObject) -> None:
    mutated, steps = mutate_bytes(BASE, HypothesisChooser(data))
    _check(workdir, mutated, steps, attack=False)


@settings(FUZZ_SETTINGS, max_examples=120)
@given(data=st.data())
def test_mutations_end_cleanly_with_the_attack(workdir: Path, data: st.DataObject) -> None:
    mutated, steps = mutate(BASE, HypothesisChooser(data))
    _check(workdir, mutated, steps, attack=True)
