"""Where a grid's tasks run: in this process one after another (`serial`, the default), or as tasks on a Ray cluster
(`ray`: a local Ray started for the run, or an existing cluster by address).

The grid stays ours (its cells, the defender's rule, the reports, the one results file); Ray only runs the tasks
and their dependencies (Ray core tasks, not Ray Tune). A grid file may say

```yaml
executor: ray
resources:
  suspect: {cpus: 2}           # each backdoored (or clean) model's training and its once-per-suspect measurements
  cell: {cpus: 1, gpus: 0}     # each defense cell
  threads: 1                   # torch threads per task (default: the task's CPUs)
```

and `hf-gnft benchmark --executor`, `--ray_address` (or `RAY_ADDRESS`) and `--threads` override it. Ray is an
optional dependency: `pip install hf-gnft[ray]`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .settings import check_numeric_settings

#: the executors a grid or `--executor` may name
EXECUTORS = ("serial", "ray")
#: the task kinds `resources` may size
TASK_KINDS = ("suspect", "cell")
#: how often Ray restarts a task whose worker died (a lost node, an OOM kill); a Python error is never retried
MAX_RETRIES_LOST_WORKER = 2


class ExecutorError(ValueError):
    """An executor setting that cannot work: an unknown executor, bad resources, an address nothing listens on, or
    resources the cluster does not have."""


@dataclass
class TaskResources:
    """What one task asks the scheduler for: CPUs and GPUs (fractions allowed, as in Ray)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        try:
            check_numeric_settings(self, error=ExecutorError)
        except ExecutorError as error:
            raise ExecutorError(f"resources: {error}") from None
        if self.cpus == 0 and self.gpus == 0:
            raise ExecutorError("resources: a task needs at least some CPU or GPU (cpus and gpus are both 0)")


@dataclass
class ExecutorSettings:
    """Which executor runs a grid, and what each task asks for.

    Args:
        executor: `"serial"` (this process, one task after another) or `"ray"`.
        ray_address: an existing Ray cluster (`host:port`, `ray://host:port` or `auto`); `None` starts a local Ray
            on this machine for the run (all its cores) or uses `RAY_ADDRESS` when set.
        threads: torch threads per task (`None`: the task's CPUs, at least 1; in the serial executor the process's
            current setting, at most 2).
        suspect: resources of a suspect's task (training the model, then its once-per-suspect measurements).
        cell: resources of a defense cell's task.
    """

    executor: str = "serial"
    ray_address: str | None = None
    threads: int | None = None
    suspect: TaskResources = field(default_factory=TaskResources)
    cell: TaskResources = field(default_factory=TaskResources)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ExecutorError(
                f"unknown executor {self.executor!r}: the known executors are {', '.join(EXECUTORS)}"
            )
        check_numeric_settings(self, error=ExecutorError)
        if self.ray_address is not None and self.executor != "ray":
            raise ExecutorError(
                "a Ray address was given, but the executor is not 'ray' (pass --executor ray)"
            )

    @classmethod
    def from_grid(
        cls,
        executor: str | None = None,
        resources: dict[str, Any] | None = None,
        *,
        flag_executor: str | None = None,
        flag_address: str | None = None,
        flag_threads: int | None = None,
    ) -> ExecutorSettings:
        """The grid's `executor:` and `resources:` with the command line's flags over them (`RAY_ADDRESS` is read
        when the executor is Ray and no address was given)."""
        resources = dict(resources or {})
        unknown = sorted(set(resources) - {*TASK_KINDS, "threads"})
        if unknown:
            raise ExecutorError(
                f"resources: unknown keys {', '.join(unknown)} (known: {', '.join(TASK_KINDS)}, threads)"
            )
        sized = {}
        for kind in TASK_KINDS:
            entry = resources.get(kind) or {}
            if not isinstance(entry, dict) or set(entry) - {"cpus", "gpus"}:
                raise ExecutorError(f"resources.{kind} must be a mapping of cpus and gpus, got {entry!r}")
            sized[kind] = TaskResources(**entry)
        chosen = flag_executor or executor or "serial"
        address = flag_address
        if address is None and chosen == "ray":
            address = os.environ.get("RAY_ADDRESS") or None
        threads = flag_threads if flag_threads is not None else resources.get("threads")
        return cls(executor=chosen, ray_address=address, threads=threads, **sized)

    def task_threads(self, resources: TaskResources) -> int:
        """The torch threads a task of `resources` runs with."""
        if self.threads is not None:
            return self.threads
        return max(1, int(resources.cpus))


def pin_threads(threads: int) -> None:
    """Pin this process's torch (and its OpenMP pool) to `threads` threads: one task's share of a worker."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def check_address_listens(address: str, timeout: float = 5.0) -> None:
    """A clear error, before anything trains, when nothing listens at a Ray cluster's `host:port` (Ray itself
    would retry for a minute and then fail deep in its client). `auto` is left to Ray."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--ray_address must be host:port, ray://host:port or auto, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ExecutorError(
            f"nothing listens at the Ray address {address!r} ({error.strerror or error}): start the cluster's head "
            "with `ray start --head` there, or leave --ray_address out to start a local Ray for this run"
        ) from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("the ray executor needs Ray: pip install 'hf-gnft[ray]'") from None
    return ray


def start_ray(settings: ExecutorSettings, *, num_cpus: int | None = None):
    """Connect to `settings.ray_address`, or start a local Ray (all of this machine's cores, or `num_cpus`), unless
    this process already is connected; then check that the cluster has the CPUs and GPUs one task asks for.

    Returns:
        The `ray` module, connected.

    Raises:
        ExecutorError: Ray is not installed, nothing listens at the address, or no node could run a task.
    """
    ray = import_ray()
    if not ray.is_initialized():
        if settings.ray_address is not None:
            check_address_listens(settings.ray_address)
            ray.init(address=settings.ray_address, logging_level="WARNING", log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    check_cluster_resources(ray.cluster_resources(), settings)
    return ray


def check_cluster_resources(available: dict[str, float], settings: ExecutorSettings) -> None:
    """Refuse, before anything is submitted, a task that no node of the cluster could run (Ray would leave it
    pending for ever)."""
    for kind in TASK_KINDS:
        wanted: TaskResources = getattr(settings, kind)
        for resource, key in (("cpus", "CPU"), ("gpus", "GPU")):
            need = getattr(wanted, resource)
            have = available.get(key, 0.0)
            if need > have:
                raise ExecutorError(
                    f"resources.{kind} asks for {need:g} {key}{'s' if need != 1 else ''} per task, but the Ray "
                    f"cluster has {have:g}: lower it in the grid's `resources`, or run on a cluster that has them"
                )


def task_options(resources: TaskResources) -> dict[str, Any]:
    """Ray task options: the task's resources; a lost worker is retried, a Python error is not."""
    return {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus,
        "max_retries": MAX_RETRIES_LOST_WORKER,
        "retry_exceptions": False,
    }


def describe_task_error(error: BaseException) -> str:
    """`Type: message` of what a task raised (Ray's wrapper unwrapped), for a failed cell's row."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[-1] if message else ''}".strip()


def as_completed(ray: Any, refs: Iterable[Any]) -> Iterable[tuple[Any, Any, BaseException | None]]:
    """Each of `refs` as it finishes: (ref, its value or None, what it raised or None)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                yield ref, ray.get(ref), None
            except Exception as error:  # the task's own error, or a lost worker after its retries
                yield ref, None, error


_REMOTE_FUNCTIONS: dict[tuple, Any] = {}


def run_remote(
    ray: Any,
    function: Callable[..., Any],
    resources: TaskResources,
    *args: Any,
) -> Any:
    """Submit `function(*args)` as a Ray task with `resources`; returns its object ref. Object refs among `args` are
    dependencies: the task starts once they are done and receives their values."""
    options = task_options(resources)
    key = (function, tuple(sorted(options.items())))
    if key not in _REMOTE_FUNCTIONS:  # one registration per function and resources, not one per task
        _REMOTE_FUNCTIONS[key] = ray.remote(**options)(function)
    return _REMOTE_FUNCTIONS[key].remote(*args)


__all__ = [
    "EXECUTORS",
    "ExecutorError",
    "ExecutorSettings",
    "TaskResources",
    "as_completed",
    "check_address_listens",
    "check_cluster_resources",
    "describe_task_error",
    "pin_threads",
    "run_remote",
    "start_ray",
    "task_options",
]
