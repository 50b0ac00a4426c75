"""``ingest:``, where the data is, how it is validated, and the embedded demo (frcnn_pipeline.data).

Defaults: the COCO 2017 layout, header-only image checks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from frcnn_pipeline.config.section import Section


class TrainSplitParams(Section):
    annotation_file: str = Field(
        "annotations/instances_train2017.json", description="relative to data_root (or absolute)"
    )
    image_dir: str = Field("train2017", description="relative to data_root (or absolute)")
    drop_images_without_annotations: bool = Field(True, description="as detectron2 does for training")


class ValSplitParams(Section):
    annotation_file: str = Field(
        "annotations/instances_val2017.json", description="relative to data_root (or absolute)"
    )
    image_dir: str = Field("val2017", description="relative to data_root (or absolute)")
    drop_images_without_annotations: bool = Field(False, description="evaluation keeps every image")


class SplitsParams(Section):
    train: TrainSplitParams = TrainSplitParams()
    val: ValSplitParams = ValSplitParams()


class SeverityParams(Section):
    """What happens to the records a check finds (frcnn_pipeline.data.coco). A check may only be escalated to
    fatal (stop with an error); structural problems (unreadable JSON, missing fields, duplicate ids...) always
    are."""

    unknown_image: Literal["dropped", "fatal"] = "dropped"
    unknown_category: Literal["dropped", "fatal"] = "dropped"
    invalid_bbox: Literal["dropped", "fatal"] = "dropped"
    degenerate_bbox: Literal["dropped", "fatal"] = "dropped"
    bbox_outside_image: Literal["dropped", "fatal"] = "dropped"
    unsafe_file_name: Literal["dropped", "fatal"] = "dropped"
    missing_image_file: Literal["dropped", "fatal"] = "dropped"
    unreadable_image: Literal["dropped", "fatal"] = "dropped"
    image_size_mismatch: Literal["dropped", "fatal"] = "dropped"
    clipped_bbox: Literal["fixed", "fatal"] = "fixed"
    image_without_annotations: Literal["reported", "fatal"] = "reported"
    crowd_annotation: Literal["reported", "fatal"] = "reported"
    unused_category: Literal["reported", "fatal"] = "reported"
    annotation_id_zero: Literal["reported", "fatal"] = "reported"
    noncontiguous_category_ids: Literal["reported", "fatal"] = "reported"


class ValidationParams(Section):
    min_box_size: float = Field(0.0, ge=0, description="boxes narrower or lower (pixels) are dropped")
    image_checks: Literal["none", "header", "decode"] = Field(
        "header", description="header: format and size (fast); decode: full decode (slow)"
    )
    workers: int = Field(8, ge=1, description="threads for the image checks (I/O-bound)")
    severity: SeverityParams = SeverityParams()


class DemoDatasetParams(Section):
    """The synthetic demo's generator settings (frcnn_pipeline.data.demo); the demo is regenerated when they
    change."""

    seed: int = Field(2024, description="the same seed draws the same dataset")
    image_size: int = Field(128, ge=16, description="square images of this side")
    num_train_images: int = Field(400, ge=1, description="train split size")
    num_val_images: int = Field(100, ge=1, description="val split size")
    min_objects: int = Field(1, ge=1, description="objects per image, at least")
    max_objects: int = Field(4, ge=1, description="objects per image, at most")
    min_object_fraction: float = Field(0.15, gt=0, le=1, description="object side / image side, at least")
    max_object_fraction: float = Field(0.6, gt=0, le=1, description="object side / image side, at most")
    max_overlap: float = Field(0.25, ge=0, le=1, description="intersection over the smaller object's box")
    noise_std: float = Field(6.0, ge=0, description="pixel noise")
    min_colour_contrast: float = Field(90.0, ge=0, description="RGB distance between object and background")
    jpeg_quality: int = Field(90, ge=1, le=100, description="of the written images")

    @model_validator(mode="after")
    def _consistent(self) -> DemoDatasetParams:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.min_object_fraction > self.max_object_fraction:
            raise ValueError("need 0 < min_object_fraction <= max_object_fraction <= 1")
        return self


class DemoParams(DemoDatasetParams):
    output_dir: str = Field("data/01_raw/demo", description="where the demo is generated")


class IngestParams(Section):
    data_root: str | None = Field(
        None, description="a dataset root (the card's --data_path); null: the synthetic demo (globals.yml)"
    )
    splits: SplitsParams = SplitsParams()
    validation: ValidationParams = ValidationParams()
    demo: DemoParams = DemoParams()
