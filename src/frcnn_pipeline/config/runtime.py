"""``runtime:``, where and how training and inference run (frcnn_pipeline.engine).

Defaults: one CPU process, fp32.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from frcnn_pipeline.config.section import Section


class AmpParams(Section):
    """float16 is loss-scaled: on NPU by torch_npu's GradScaler (it reads the chip's overflow flag: Ascend 910
    saturates fp16 overflow instead of making inf), on CUDA by torch.amp's. bfloat16 needs no scaling; on CPU
    it is the only reduced precision (engine/amp.py)."""

    enabled: bool = Field(False, description="mixed precision")
    backend: Literal["torch", "apex"] = Field(
        "torch",
        description="torch (autocast + loss scaling) or apex O1 (built from source, never PyPI's `apex`; "
        "unverified here)",
    )
    dtype: Literal["float16", "bfloat16"] = Field(
        "bfloat16", description="float16 on NPU/CUDA; bfloat16 (or off) on CPU, where float16 is refused"
    )
    opt_level: Literal["O1", "O2"] = Field(
        "O1", description="apex only; O2 is refused (it casts model, inputs and target boxes to fp16)"
    )
    loss_scale: Literal["dynamic"] | Annotated[float, Field(gt=0)] = Field(
        "dynamic",
        description="dynamic: from 2^16, halved after an overflowing (skipped) step, doubled after 2000 "
        "clean ones; a number: truly static, never halved or grown (an overflowing step is still skipped)",
    )


class RuntimeParams(Section):
    device: Literal["cpu", "cuda", "npu", "auto"] = Field("cpu", description="auto: npu, then cuda, then cpu")
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="workers (one per device) on each node; under torchrun (each Kedro process is one "
        "worker) it must equal torchrun's --nproc-per-node",
    )
    launcher: Literal["auto", "none", "torchrun", "slurm"] = Field(
        "auto",
        description="whose environment describes the world: torchrun (RANK, LOCAL_RANK, WORLD_SIZE, "
        "LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT; also Kubeflow's PyTorchJob), slurm "
        "(SLURM_NODEID, SLURM_STEP_NUM_NODES or SLURM_NNODES, the first host of SLURM_STEP_NODELIST or "
        "SLURM_JOB_NODELIST, MASTER_PORT or a port from SLURM_JOB_ID) or none (these parameters alone); "
        "auto: torchrun's variables if set, else SLURM's, else none",
    )
    num_nodes: int | None = Field(
        None,
        ge=1,
        description="machines, each running the same env with its node_rank; null: the launcher's, else 1. "
        "A value given wins over SLURM's; under torchrun it must agree with torchrun's (so must node_rank, "
        "master_addr and master_port)",
    )
    node_rank: int | None = Field(
        None, ge=0, description="this machine, 0..num_nodes-1; null: the launcher's, else 0"
    )
    master_addr: str | None = Field(
        None,
        description="node 0's address, reachable from every node; null: the launcher's, else 127.0.0.1",
    )
    master_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="node 0's rendezvous port, the same on every node; null: the launcher's, else 29500 "
        "(multi-node) or a free port (single node); 0: a free port (single node only)",
    )
    timeout_minutes: float = Field(
        30.0, gt=0, description="collective timeout: a rank that stops answering ends the job after this"
    )
    rendezvous_timeout_s: float = Field(
        300.0, gt=0, description="how long nodes wait for each other (and for node 0) before a clear error"
    )
    seed: int = Field(42, description="per rank: seed + rank; loader workers derive theirs from it")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms (warn only)")
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per worker; null: torch's default (CPU workers split the cores)",
    )
    num_workers: int = Field(1, ge=0, description="DataLoader processes per training worker")
    pin_memory: bool = Field(True, description="pinned host memory (accelerators only)")
    channels_last: bool = Field(False, description="NHWC weights and inputs in training")
    detection_ops: Literal["auto", "portable"] = Field(
        "auto", description="NMS/RoIAlign kernels: auto (the device's own) or portable (pure PyTorch)"
    )
    inference_backend: Literal["torch", "onnxruntime"] = Field(
        "torch",
        description="evaluate and predict: torch, or ONNX Runtime (CPU) on the graph `kedro run --pipeline "
        "export` wrote",
    )
    amp: AmpParams = AmpParams()
