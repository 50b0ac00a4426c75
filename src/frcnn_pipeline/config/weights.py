"""``weights:``, the initial weights (frcnn_pipeline.weights).

Defaults: the card's ImageNet-pretrained MSRA R-50, from detectron2's model zoo.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from frcnn_pipeline.config.section import Section


class WeightsParams(Section):
    source: str = Field(
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        description="none (seeded random init), detectron2://…, an http(s) URL, or a .pkl/.pth/.safetensors",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="hex digest; a download that does not match is deleted",
    )
    cache_dir: str = Field(
        "data/01_raw/weights", description="downloads land in <cache_dir>/<host>/<url path>"
    )
    retries: int = Field(3, ge=0, description="download attempts after the first")
    backoff_s: float = Field(2.0, ge=0, description="wait before a retry; doubles each time")
    timeout_s: float = Field(60.0, gt=0, description="per network operation")
    seed: int = Field(0, description="initialises whatever the checkpoint does not cover")
    bn_fold: Literal["exact", "detectron2"] = Field(
        "exact", description="MSRA folded BN: exact (AffineChannel) or detectron2 (running_var 1)"
    )
