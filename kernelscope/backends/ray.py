"""The Ray backend: scoring tasks spread over the workers of a Ray cluster (``--backend ray``).

The driver puts each preprocessed image shard into Ray's object store once (every layer's tasks reuse it) and
each layer's model, once. A worker builds one onnxruntime session per layer the first time a task of that
layer reaches it and keeps it for the layer's other tasks (the two most recent layers, to bound memory).

Equal results to the local backend: the tasks are the same (image shard x variant group, in the same shapes),
and the first task of every (variants, images) shape is a probe that makes the check that stacked variants
reproduce one-variant runs; Ray hands its decision to the shape's other tasks, so the check happens once per
shape, as in the local backend, and each shape is decided on its own (the probes run side by side).
A worker lost mid-task (its process killed, its node gone) is retried by Ray (``max_retries``); a task is a
pure function of its inputs, so the retry returns the same predictions.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelscope.backends import ScoringTask
from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import KernelscopeError, ModelError, UsageError
from kernelscope.progress import Progress

#: Environment variable naming a file: the first task that finds it removes it and kills its worker process
#: (fault injection, so tests can check that a lost worker is retried and changes nothing).
FAULT_FILE_ENV = "KERNELSCOPE_RAY_FAULT_FILE"
#: Retries of a task whose worker died.
MAX_RETRIES = 3
#: Layers whose sessions a worker keeps.
SESSIONS_PER_WORKER = 2

_RUNNERS: OrderedDict[str, Any] = OrderedDict()  # per worker process: layer key -> KernelDropRunner


class RayBackend:
    """Runs scoring tasks as Ray tasks, one CPU each; ``address`` None starts (or joins) a local Ray."""

    name = "ray"

    def __init__(self, address: str | None = None, threads: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError(
                "--backend ray needs Ray, an optional extra: pip install 'kernelscope[ray]' (or pip install ray)"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"at {address}" if address else "locally"
                raise UsageError(f"cannot start or reach a Ray cluster {where}: {str(exc).splitlines()[0]}") from None
            self._started = True
        self.threads = threads or 1  # one CPU per task: onnxruntime must not spread further
        self._remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_score_task)
        self._probe = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, num_returns=3)(_probe_task)
        self._shards: dict[tuple[int, int], list[Any]] = {}
        self._layers: dict[int, tuple[Any, str, Any]] = {}  # id(runner) -> (runner, key, spec ref)
        self.remote_tasks = 0  # tasks run on the workers

    @property
    def cpus(self) -> float:
        """CPUs the cluster offers."""
        return float(self._ray.cluster_resources().get("CPU", 0.0))

    def _layer(self, runner) -> tuple[str, Any]:
        """The worker-side key and the object-store spec of ``runner``'s layer, put once per runner (a hybrid
        scores a layer in several calls: the workers keep its session across them)."""
        entry = self._layers.get(id(runner))
        if entry is None or entry[0] is not runner:
            entry = (runner, uuid.uuid4().hex, self._ray.put(_runner_spec(runner, self.threads)))
            self._layers = {id(runner): entry}  # only the current layer: its predecessors' specs can go
        return entry[1], entry[2]

    def _shard_refs(self, data: PreparedData, batch_size: int) -> list[Any]:
        key = (id(data), batch_size)
        if key not in self._shards:  # every layer's tasks read the same preprocessed shards
            self._shards = {key: [self._ray.put(x) for x, _ in data.batches(batch_size)]}
        return self._shards[key]

    def predict(
        self,
        runner,
        data: PreparedData,
        masks: np.ndarray,
        tasks: Sequence[ScoringTask],
        batch_size: int,
        progress: Progress,
        description: str,
    ) -> tuple[np.ndarray, int]:
        """Predictions (V, N) and the onnxruntime runs they took; see :class:`kernelscope.backends.Backend`."""
        ray = self._ray
        preds = np.empty((masks.shape[0], len(data)), dtype=np.int64)
        shards = self._shard_refs(data, batch_size)
        runs = 0
        with progress.task(f"{description} (Ray, {len(tasks)} tasks)", total=sum(t.evaluations for t in tasks)) as bar:
            key, spec = self._layer(runner)
            # The first task of each shape is a probe: it makes the stacking check and returns its decision,
            # which Ray hands to the shape's other tasks (they wait for it); the probes run side by side.
            decisions: dict[tuple[int, int], Any] = {}
            pending: dict[Any, tuple[ScoringTask, Any]] = {}  # predictions ref -> (task, runs ref or None)
            for task in tasks:
                shape = (len(task.group), task.stop - task.start)
                if runner.variant_major:  # variants run one at a time on their own sessions: nothing to check
                    ref = self._remote.remote(key, [spec], shards[task.shard], masks[task.group], None)
                    pending[ref] = (task, None)
                    continue
                if shape not in decisions and runner.decided(shape):  # checked in an earlier call (hybrid rounds)
                    decisions[shape] = ray.put(runner.stacking_state(shape))
                if shape not in decisions:
                    preds_ref, runs_ref, decisions[shape] = self._probe.remote(
                        key, [spec], shards[task.shard], masks[task.group]
                    )
                    pending[preds_ref] = (task, runs_ref)
                else:
                    ref = self._remote.remote(key, [spec], shards[task.shard], masks[task.group], decisions[shape])
                    pending[ref] = (task, None)
            remote_tasks = list(pending.values())
            devices: set[str] = set()  # where the workers' sessions ran: the report names them, not a guess
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task, runs_ref = pending.pop(ref)
                    if runs_ref is None:
                        result, task_runs, device = _get(ray, ref)
                    else:
                        (result, device), task_runs = _get(ray, ref), _get(ray, runs_ref)
                    preds[task.group, task.start : task.stop] = result
                    runs += task_runs
                    if device:  # None only for a runner that built no session
                        devices.add(device)
                    bar.advance(task.evaluations)
            if devices:  # with the earlier calls' (a hybrid scores a layer in rounds): "cpu+cuda" on mixed nodes
                devices |= set(filter(None, (runner.device or "").split("+")))
                runner.device = "+".join(sorted(devices))
            for decision in decisions.values():  # in the order the shapes first came, as the local backend
                runner.adopt_stacking(_get(ray, decision))
        self.remote_tasks += len(remote_tasks)
        return preds, runs

    def close(self) -> None:
        """Shut down the local Ray this backend started (a cluster it joined keeps running)."""
        self._shards = {}
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def _get(ray, ref) -> Any:
    """``ray.get`` with the worker's own one-line error when a task failed on a kernelscope error."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, KernelscopeError):
            raise type(cause)(str(cause)) from None
        raise ModelError(f"a Ray scoring task failed: {str(cause or exc).splitlines()[0]}") from None


def _runner_spec(runner, threads: int) -> dict[str, Any]:
    """What a worker needs to rebuild the runner's masked session for the same layer."""
    batching = runner.batching
    return {
        "model": batching.proto.SerializeToString(),
        "fixed_batch": batching.fixed_batch,
        "made_dynamic": batching.made_dynamic,
        "layer": runner.layer,
        "image_input": runner.image_input,
        "output": runner.output,
        "drop": runner.drop,
        "mechanism": runner.mechanism,  # chosen on the driver: every worker runs the variants the same way
        "providers": runner.providers,
        "threads": threads,
    }


def _worker_runner(key: str, spec_ref: list):
    """This worker's runner for the layer ``key`` (built from the spec on first use, then kept)."""
    runner = _RUNNERS.get(key)
    if runner is None:
        import onnx
        import ray

        from kernelscope.model.batching import Batching
        from kernelscope.scoring import KernelDropRunner

        spec = ray.get(spec_ref[0])
        batching = Batching(onnx.load_from_string(spec["model"]), spec["fixed_batch"], spec["made_dynamic"])
        runner = KernelDropRunner(
            batching.proto, spec["layer"], spec["image_input"], spec["output"], drop=spec["drop"],
            providers=spec["providers"], threads=spec["threads"], batching=batching, mechanism=spec["mechanism"],
        )  # fmt: skip
        _RUNNERS[key] = runner
        while len(_RUNNERS) > SESSIONS_PER_WORKER:
            _RUNNERS.popitem(last=False)
    _RUNNERS.move_to_end(key)
    return runner


def _inject_fault() -> None:
    """With :data:`FAULT_FILE_ENV` set to an existing file: take it (once, cluster-wide) and die mid-task."""
    fault = os.environ.get(FAULT_FILE_ENV)
    if fault:
        try:
            os.rename(fault, fault + ".taken")  # only one task can take it
        except OSError:
            return
        os._exit(1)  # the worker dies mid-task, as a lost node would


def _probe_task(key: str, spec_ref: list, x: np.ndarray, masks: np.ndarray):
    """The first task of a shape: its predictions with the device its session ran on, its runs, and the
    stacking decision the check made."""
    _inject_fault()
    runner = _worker_runner(key, spec_ref)
    before = runner.session_runs
    preds = runner.predict(x, masks)
    return (preds, runner.device), runner.session_runs - before, runner.stacking_state((masks.shape[0], x.shape[0]))


def _score_task(key: str, spec_ref: list, x: np.ndarray, masks: np.ndarray, state) -> tuple[np.ndarray, int, str]:
    """Any other task: predictions (V_group, images) of the shard under the group's masks, with the shape's
    stacking decision (``state``, from its probe) adopted, so no check is repeated; its runs and the device
    its session ran on."""
    _inject_fault()
    runner = _worker_runner(key, spec_ref)
    if state is not None:
        runner.adopt_stacking(state)
    before = runner.session_runs
    preds = runner.predict(x, masks)
    return preds, runner.session_runs - before, runner.device
