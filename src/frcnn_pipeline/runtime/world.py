"""Where this run's workers live: `runtime:` parameters, filled in from the cluster launcher's environment.

One supported shape per launcher:
- none (by hand) and SLURM (`srun --ntasks-per-node=1`): one Kedro process per node, which spawns
  `runtime.nproc_per_node` local workers; node 0 (`SLURM_NODEID` 0) saves the outputs.
- torchrun, and Kubeflow's PyTorchJob running torchrun: one Kedro process per device, started by torchrun,
  which is itself the worker (nothing is spawned); global rank 0 saves the outputs.

Parameters win where given (not null); under torchrun the processes already exist, so a given parameter that
contradicts torchrun's variables is an error instead. The parameters are validated by their schema
(frcnn_pipeline.config.RuntimeParams) first; this module only checks what spans several keys or comes from the
environment.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from frcnn_pipeline.config import RuntimeParams
from frcnn_pipeline.errors import UserFacingError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Where neither the parameters nor a launcher say otherwise: one node, node 0 on this machine.
SINGLE_NODE_MASTER_ADDR = "127.0.0.1"
FREE_PORT = 0  # single node only
DEFAULT_MASTER_PORT = 29500  # several nodes without a port given
# Under SLURM without MASTER_PORT: a port derived from the job id, so two jobs sharing a node do not collide.
SLURM_PORT_BASE, SLURM_PORT_RANGE = 20000, 10000


_RUNTIME_DEFAULTS = RuntimeParams()


class LauncherConfigError(UserFacingError, ValueError):
    """The runtime parameters and the launcher's environment do not describe one consistent world."""


@dataclass(frozen=True)
class WorldConfig:
    """The resolved world: `runtime.{device,nproc_per_node,num_nodes,node_rank,master_*}` + the launcher.

    Built by `from_runtime` from the validated `runtime:` section; the defaults are that section's defaults
    resolved without a launcher (tests build worlds directly).
    """

    device: str = _RUNTIME_DEFAULTS.device
    nproc_per_node: int = _RUNTIME_DEFAULTS.nproc_per_node
    num_nodes: int = 1
    node_rank: int = 0
    master_addr: str = SINGLE_NODE_MASTER_ADDR
    # 0 (single node only): a free port is picked.
    master_port: int = FREE_PORT
    timeout_minutes: float = _RUNTIME_DEFAULTS.timeout_minutes
    rendezvous_timeout_s: float = _RUNTIME_DEFAULTS.rendezvous_timeout_s
    # The resolved launcher: none | slurm | torchrun.
    launcher: str = "none"
    # torchrun only: this process is the worker of this global and local rank.
    process_rank: int | None = None
    local_rank: int | None = None

    def __post_init__(self) -> None:
        # What spans several keys or may come from the launcher's variables (the schema checked the rest).
        if self.nproc_per_node < 1 or self.num_nodes < 1:
            raise LauncherConfigError(
                f"runtime.nproc_per_node ({self.nproc_per_node}) and runtime.num_nodes ({self.num_nodes}) "
                "must be >= 1"
            )
        if not 0 <= self.node_rank < self.num_nodes:
            raise LauncherConfigError(
                f"runtime.node_rank must be in [0, {self.num_nodes}) for runtime.num_nodes={self.num_nodes}, "
                f"got {self.node_rank}"
            )
        if self.master_port == FREE_PORT and self.num_nodes > 1:
            raise LauncherConfigError(
                "runtime.master_port must be set (the same on every node) for a multi-node run; 0 picks a "
                "free port on a single node only"
            )
        if not 0 <= self.master_port < 65536:
            raise LauncherConfigError(f"runtime.master_port must be a TCP port, got {self.master_port}")

    @classmethod
    def from_runtime(cls, runtime: RuntimeParams, environ: Mapping[str, str] | None = None) -> WorldConfig:
        """The world of the validated `runtime:` section, filled in from the launcher's environment variables
        (the process's own by default)."""
        return resolve_world(runtime, os.environ if environ is None else environ)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.num_nodes

    @property
    def spawns_workers(self) -> bool:
        """True when this process spawns its node's workers (every shape but torchrun's, world size > 1)."""
        return self.launcher != "torchrun" and self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """The job's one process that saves outputs: global rank 0 (torchrun), else node 0's Kedro process."""
        return self.process_rank == 0 if self.launcher == "torchrun" else self.node_rank == 0

    def summary(self) -> str:
        """One line for the log."""
        who = f"rank {self.process_rank}, " if self.process_rank is not None else ""
        return (
            f"{who}node {self.node_rank} of {self.num_nodes}, {self.nproc_per_node} {self.device} "
            f"worker(s) per node, world size {self.world_size}, rendezvous at "
            f"{self.master_addr}:{self.master_port} (launcher: {self.launcher})"
        )

    def describe(self) -> dict[str, Any]:
        """For the log and the training record."""
        described = {key: value for key, value in asdict(self).items() if value is not None}
        described["world_size"] = self.world_size
        return described


def this_command() -> str:
    """This process's command line as typed (`kedro run ...`, `python -m kedro run ...`), for a message that
    says to start it again."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        program = ["python", "-m", spec.name.removesuffix(".__main__")]
    else:
        program = [os.path.basename(sys.argv[0])]
    return shlex.join([*program, *sys.argv[1:]])


def detect_launcher(environ: Mapping[str, str]) -> str:
    """torchrun when its variables are set, slurm inside a SLURM job, else none."""
    if all(name in environ for name in TORCHRUN_VARIABLES):
        return "torchrun"
    if "RANK" in environ and "WORLD_SIZE" in environ:
        raise LauncherConfigError(
            "RANK and WORLD_SIZE are set but LOCAL_RANK/LOCAL_WORLD_SIZE are not (a Kubeflow PyTorchJob "
            "without torchrun?). Start the container command with `torchrun` (the PyTorchJob's PET_* "
            "variables configure it), or set runtime.launcher: none to ignore these variables."
        )
    if "SLURM_NODEID" in environ and ("SLURM_STEP_NUM_NODES" in environ or "SLURM_NNODES" in environ):
        return "slurm"
    return "none"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist, e.g. `node[01-03,07],gpu5` -> `node01`, without calling scontrol.

    Each bracket group holds ranges or single values; the first host takes the first value of every group,
    keeping its zero padding. (Written by hand: expanding the whole list needs scontrol or a dependency, and
    only the first host is needed.)
    """
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    first = nodelist[:end].strip()
    if not first or depth < 0 or first.count("[") != first.count("]"):
        raise LauncherConfigError(f"Cannot read the SLURM node list {nodelist!r}")
    host = re.sub(r"\[([^\]]*)\]", lambda group: re.split(r"[,-]", group.group(1))[0].strip(), first)
    if not host or "[" in host:
        raise LauncherConfigError(f"Cannot read the SLURM node list {nodelist!r}")
    return host


def _tasks_per_node(text: str) -> list[int]:
    """SLURM's tasks-per-node syntax, e.g. `8(x2),4` -> [8, 8, 4]."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise LauncherConfigError(f"Cannot read SLURM's tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise LauncherConfigError(f"{name}={environ[name]!r} is not an integer") from None


def _from_torchrun(environ: Mapping[str, str]) -> dict[str, Any]:
    rank, local_rank = _int_variable(environ, "RANK"), _int_variable(environ, "LOCAL_RANK")
    world_size, local_world_size = (
        _int_variable(environ, "WORLD_SIZE"),
        _int_variable(environ, "LOCAL_WORLD_SIZE"),
    )
    if world_size % local_world_size:
        raise LauncherConfigError(
            f"torchrun: WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE {local_world_size}; "
            "every node must run the same number of processes (torchrun --nproc-per-node)"
        )
    return {
        "nproc_per_node": local_world_size,
        "num_nodes": world_size // local_world_size,
        "node_rank": _int_variable(environ, "GROUP_RANK")
        if "GROUP_RANK" in environ
        else rank // local_world_size,
        "master_addr": environ["MASTER_ADDR"],
        "master_port": _int_variable(environ, "MASTER_PORT"),
        "process_rank": rank,
        "local_rank": local_rank,
    }


def _from_slurm(environ: Mapping[str, str]) -> dict[str, Any]:
    tasks = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_NTASKS_PER_NODE")
    if tasks and set(_tasks_per_node(tasks)) != {1}:
        raise LauncherConfigError(
            f"SLURM started {tasks} task(s) per node, but this project runs one task per node that spawns "
            "runtime.nproc_per_node workers: use `srun --ntasks-per-node=1 kedro run ...` (or torchrun "
            "inside a one-task-per-node srun)."
        )
    nodelist = next(
        (
            environ[name]
            for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
            if name in environ
        ),
        None,
    )
    if nodelist is None:
        raise LauncherConfigError(
            "SLURM: none of SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST is set"
        )
    if "MASTER_PORT" in environ:
        port = _int_variable(environ, "MASTER_PORT")
    elif "SLURM_JOB_ID" in environ:
        port = SLURM_PORT_BASE + _int_variable(environ, "SLURM_JOB_ID") % SLURM_PORT_RANGE
    else:
        port = DEFAULT_MASTER_PORT
    nodes = "SLURM_STEP_NUM_NODES" if "SLURM_STEP_NUM_NODES" in environ else "SLURM_NNODES"
    return {
        "num_nodes": _int_variable(environ, nodes),
        "node_rank": _int_variable(environ, "SLURM_NODEID"),
        "master_addr": environ.get("MASTER_ADDR") or first_host(nodelist),
        "master_port": port,
    }


def resolve_world(params: RuntimeParams, environ: Mapping[str, str]) -> WorldConfig:
    """Parameters where given (not null), else the launcher's variables, else single-node defaults."""
    launcher = params.launcher
    if launcher == "auto":
        launcher = detect_launcher(environ)
    elif launcher == "torchrun" and not all(name in environ for name in TORCHRUN_VARIABLES):
        missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
        raise LauncherConfigError(
            f"runtime.launcher is torchrun but {missing} are not set: start with torchrun"
        )
    elif launcher == "slurm" and "SLURM_NODEID" not in environ:
        raise LauncherConfigError("runtime.launcher is slurm but SLURM_NODEID is not set: start with srun")
    from_launcher = {"torchrun": _from_torchrun, "slurm": _from_slurm}.get(launcher, lambda _: {})(environ)
    given = {
        key: getattr(params, key)
        for key in ("nproc_per_node", "num_nodes", "node_rank", "master_addr", "master_port")
        if getattr(params, key) is not None
    }
    if launcher == "torchrun":
        contradicting = {
            key: (value, from_launcher[key]) for key, value in given.items() if value != from_launcher[key]
        }
        if contradicting:
            listed = ", ".join(f"runtime.{key}={ours} but torchrun says {theirs}" for key, (ours, theirs) in
                               contradicting.items())  # fmt: skip
            raise LauncherConfigError(
                f"Under torchrun every process is one worker of torchrun's world: {listed}. Make them agree "
                "(torchrun --nproc-per-node/--nnodes/--node-rank/--master-addr/--master-port), e.g. "
                f"--params runtime.nproc_per_node={from_launcher['nproc_per_node']}, or drop these "
                "parameters."
            )
    # The parameters given win; what neither they nor the launcher say keeps WorldConfig's single-node
    # default, except the port of several nodes, which must be fixed in advance.
    resolved = {**from_launcher, **given}
    if resolved.get("num_nodes", WorldConfig.num_nodes) > 1 and "master_port" not in resolved:
        resolved["master_port"] = DEFAULT_MASTER_PORT
    return WorldConfig(
        device=params.device,
        timeout_minutes=params.timeout_minutes,
        rendezvous_timeout_s=params.rendezvous_timeout_s,
        launcher=launcher,
        **resolved,
    )
