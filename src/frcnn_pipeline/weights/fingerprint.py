"""A state dict's sha256: which weights a run started from or measured, whatever file format held them."""

from __future__ import annotations

import hashlib

import torch


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the keys in order, each tensor's dtype, shape and bytes.

    Two state dicts hash alike exactly when they hold the same tensors under the same names, so the same
    weights read from a .pkl, a .pth or a .safetensors file have one fingerprint.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
