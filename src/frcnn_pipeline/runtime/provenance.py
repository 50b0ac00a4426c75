"""What a run was made with: the code's git state and the versions of the packages that shape the results."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

# Always reported; the optional ones only when installed (NPU users build apex from source: never PyPI's).
PACKAGES = ("torch", "torchvision", "kedro", "kedro-datasets", "kedro-mlflow", "mlflow", "pycocotools")
OPTIONAL_PACKAGES = ("torch_npu", "apex")


def package_versions() -> dict[str, str]:
    """Installed versions by distribution name (read from metadata: nothing is imported)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    for name in OPTIONAL_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state(path: str | Path) -> dict[str, str | bool | None]:
    """`{"commit": sha or None, "dirty": bool or None}` of the git checkout holding `path`.

    None where `path` is not in a git checkout or git is missing (e.g. an installed package).
    """
    try:
        commit = _git(path, "rev-parse", "HEAD").strip()
        status = _git(path, "status", "--porcelain")  # untracked files count, ignored ones (data) do not
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def _git(path: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(path), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout
