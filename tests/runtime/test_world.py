"""The world from `runtime:` and the launcher's environment: torchrun, SLURM, by hand; parameters win."""

import os
import subprocess
import sys

import pytest

from frcnn_pipeline.config import ParameterError, RuntimeParams
from frcnn_pipeline.runtime.world import LauncherConfigError, WorldConfig, first_host

TORCHRUN = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
            "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x"}  # fmt: skip
SLURM = {"SLURM_PROCID": "1", "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_STEP_NUM_NODES": "2",
         "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_NODELIST": "node[07-08]",
         "SLURM_JOB_ID": "123456"}  # fmt: skip


def resolve_world(runtime: dict, environ: dict) -> WorldConfig:
    """The world of a `runtime:` section (validated: left-out keys take the schema's defaults, i.e.
    nproc_per_node 1, launcher auto, num_nodes/node_rank/master_* null) in a given environment."""
    return WorldConfig.from_runtime(RuntimeParams.parse(runtime, "runtime"), environ)


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node01", "node01"), ("node[01-03,07]", "node01"), ("gpu[7,2-3],cpu1", "gpu7"), ("a1,b[2-3]", "a1"),
     ("rack[2-3]-n[009-010]", "rack2-n009"), ("127.0.0.[1-2]", "127.0.0.1"), (" host-a , host-b", "host-a")],
)  # fmt: skip
def test_first_host_of_a_slurm_nodelist(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "node[01-03", "node]1[", ",node1"])
def test_unreadable_nodelist_is_a_clear_error(nodelist):
    with pytest.raises(LauncherConfigError, match="Cannot read the SLURM node list"):
        first_host(nodelist)


def test_no_launcher_single_node_defaults():
    world = resolve_world({"nproc_per_node": 2}, {})
    assert (world.launcher, world.num_nodes, world.node_rank, world.master_addr) == (
        "none",
        1,
        0,
        "127.0.0.1",
    )
    assert world.master_port == 0, "a single node picks a free port"
    assert world.world_size == 2 and world.spawns_workers and world.is_main_process


def test_by_hand_multi_node_uses_the_parameters():
    runtime = {"num_nodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"}
    world = resolve_world(runtime, {})
    assert (world.num_nodes, world.node_rank, world.master_port) == (2, 1, 29500)
    assert not world.is_main_process


def test_torchrun_variables_make_this_process_one_worker():
    world = resolve_world({"nproc_per_node": 4}, TORCHRUN)
    assert world.launcher == "torchrun" and not world.spawns_workers
    assert (world.process_rank, world.local_rank, world.node_rank, world.num_nodes) == (5, 1, 1, 2)
    assert (world.master_addr, world.master_port, world.world_size) == ("10.0.0.1", 29400, 8)
    assert not world.is_main_process
    assert resolve_world({"nproc_per_node": 4}, {**TORCHRUN, "RANK": "0"}).is_main_process


def test_torchrun_contradicted_by_a_parameter_names_both():
    with pytest.raises(
        LauncherConfigError, match=r"runtime.nproc_per_node=1 but torchrun says 4.*nproc_per_node=4"
    ):
        resolve_world({}, TORCHRUN)
    with pytest.raises(LauncherConfigError, match=r"runtime.node_rank=0 but torchrun says 1"):
        resolve_world({"nproc_per_node": 4, "node_rank": 0}, TORCHRUN)


def test_rank_without_local_variables_asks_for_torchrun():
    with pytest.raises(LauncherConfigError, match=r"Kubeflow PyTorchJob without torchrun.*launcher: none"):
        resolve_world({}, {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "m", "MASTER_PORT": "1"})
    assert resolve_world({"launcher": "none"}, {"RANK": "1", "WORLD_SIZE": "2"}).launcher == "none"


def test_slurm_step_gives_nodes_rank_first_host_and_a_job_port():
    world = resolve_world({"nproc_per_node": 8}, SLURM)
    assert (world.launcher, world.num_nodes, world.node_rank) == ("slurm", 2, 1)
    assert world.master_addr == "node07" and world.master_port == 20000 + 123456 % 10000
    assert world.world_size == 16 and world.spawns_workers and not world.is_main_process
    assert resolve_world({}, {**SLURM, "MASTER_PORT": "29999"}).master_port == 29999


def test_parameters_win_over_slurm():
    runtime = {"master_addr": "10.1.1.1", "master_port": 30000, "num_nodes": 2}
    world = resolve_world(runtime, SLURM)
    assert (world.master_addr, world.master_port, world.node_rank) == ("10.1.1.1", 30000, 1)
    assert resolve_world({"launcher": "none"}, SLURM).num_nodes == 1


def test_slurm_with_several_tasks_per_node_asks_for_one():
    with pytest.raises(LauncherConfigError, match=r"8\(x2\) task\(s\) per node.*--ntasks-per-node=1"):
        resolve_world({}, {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "8(x2)"})


def test_explicit_launcher_without_its_environment_is_an_error():
    with pytest.raises(LauncherConfigError, match="launcher is torchrun but"):
        resolve_world({"launcher": "torchrun"}, {})
    with pytest.raises(LauncherConfigError, match="launcher is slurm but SLURM_NODEID is not set"):
        resolve_world({"launcher": "slurm"}, {})
    with pytest.raises(ParameterError, match=r"runtime\.launcher: 'mpi' is not one of 'auto', 'none'"):
        resolve_world({"launcher": "mpi"}, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"num_nodes": 2, "node_rank": 2}, r"node_rank must be in \[0, 2\)"),
     ({"num_nodes": 2, "master_port": 0}, "master_port must be set"),
     ({"nproc_per_node": 0}, "must be >= 1")],
)  # fmt: skip
def test_inconsistent_world_is_refused(fields, message):
    with pytest.raises(LauncherConfigError, match=message):
        WorldConfig(**fields)


def test_the_schema_checks_the_runtime_keys_before_the_world_is_resolved():
    with pytest.raises(ParameterError, match=r"runtime.rendezvous_timeout_s: 0 must be > 0"):
        resolve_world({"rendezvous_timeout_s": 0}, {})
    with pytest.raises(ParameterError, match=r"runtime.master_port: 70000 must be <= 65535"):
        resolve_world({"master_port": 70000}, {})


def test_launcher_variables_that_are_not_numbers_are_named():
    with pytest.raises(LauncherConfigError, match=r"SLURM_NODEID='first' is not an integer"):
        resolve_world({}, {**SLURM, "SLURM_NODEID": "first"})


def test_from_runtime_reads_the_process_environment(monkeypatch):
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    assert WorldConfig.from_runtime(RuntimeParams()).node_rank == 1
    assert WorldConfig.from_runtime(RuntimeParams()).describe()["launcher"] == "slurm"


@pytest.mark.parametrize("as_module", [True, False])
def test_this_command_is_the_command_line_as_typed(tmp_path, as_module):
    """What an error tells the user to start again: `python -m pkg ...` or the script's name, quoted."""
    package = tmp_path / "runner"
    package.mkdir()
    code = "import sys; from frcnn_pipeline.runtime.world import this_command; print(this_command())"
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(code)
    program = ["-m", "runner"] if as_module else [str(package / "__main__.py")]
    printed = subprocess.run(
        [sys.executable, *program, "run", "--params", "a=1,b=two words"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])},
    ).stdout.strip()  # fmt: skip
    typed = "python -m runner" if as_module else "__main__.py"
    assert printed == f"{typed} run --params 'a=1,b=two words'"
