"""``ingest:``, where the data is, how it is validated, and the embedded demo (frcnn_pipeline.data).

Defaults: the COCO 2017 layout, header-only image checks.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from frcnn_pipeline.config.section import Section


class SplitParams(Section):
    annotation_file: str | None = Field(None, description="relative to data_root (or absolute)")
    image_dir: str | None = Field(None, description="relative to data_root (or absolute)")
    drop_images_without_annotations: bool | None = Field(
        None, description="default: true for train (as detectron2 does), false for evaluation splits"
    )


# `train` trains; every other split is an evaluation split. Parameters merge softly, so an env switches a
# split off by setting it to null. Outside the demo every split needs both paths.
DEFAULT_SPLITS: dict[str, dict[str, Any]] = {
    "train": {"annotation_file": "annotations/instances_train2017.json", "image_dir": "train2017"},
    "val": {"annotation_file": "annotations/instances_val2017.json", "image_dir": "val2017"},
}


class SeverityParams(Section):
    """What happens to the records a check finds (frcnn_pipeline.data.coco). A check may only be escalated to
    fatal (stop with an error); structural problems (unreadable JSON, missing fields, duplicate ids...) always
    are."""

    unknown_image: Literal["dropped", "fatal"] = Field(
        "dropped", description="annotation of an unknown image id"
    )
    unknown_category: Literal["dropped", "fatal"] = Field(
        "dropped", description="annotation of an unknown category id"
    )
    invalid_bbox: Literal["dropped", "fatal"] = Field("dropped", description="bbox not 4 finite numbers")
    degenerate_bbox: Literal["dropped", "fatal"] = Field(
        "dropped", description="bbox width or height <= 0, or below min_box_size"
    )
    bbox_outside_image: Literal["dropped", "fatal"] = Field("dropped", description="bbox outside its image")
    unsafe_file_name: Literal["dropped", "fatal"] = Field(
        "dropped", description="absolute file_name or one with '..' (the image and its annotations)"
    )
    missing_image_file: Literal["dropped", "fatal"] = Field("dropped", description="no such image file")
    unreadable_image: Literal["dropped", "fatal"] = Field("dropped", description="image file not readable")
    unconvertible_image: Literal["dropped", "fatal"] = Field(
        "dropped", description="pixels with no faithful 8-bit RGB form, e.g. float data (decode checks)"
    )
    image_size_mismatch: Literal["dropped", "fatal"] = Field(
        "dropped", description="image size differs from the JSON's width and height"
    )
    clipped_bbox: Literal["fixed", "fatal"] = Field("fixed", description="bbox past the border: clipped")
    transparent_image: Literal["reported", "fatal"] = Field(
        "reported", description="transparent pixels: shown over black (decode checks)"
    )
    image_without_annotations: Literal["reported", "fatal"] = Field(
        "reported", description="image with no annotation (see drop_images_without_annotations)"
    )
    crowd_annotation: Literal["reported", "fatal"] = Field(
        "reported", description="iscrowd: kept, left out of training targets"
    )
    unused_category: Literal["reported", "fatal"] = Field(
        "reported", description="category no annotation uses"
    )
    annotation_id_zero: Literal["reported", "fatal"] = Field(
        "reported", description="annotation id < 1 (renumbered in val_ground_truth)"
    )
    noncontiguous_category_ids: Literal["reported", "fatal"] = Field(
        "reported", description="category ids not 1..K (mapped to labels 0..K-1)"
    )


class ValidationParams(Section):
    min_box_size: float = Field(0.0, ge=0, description="boxes narrower or lower (pixels) are dropped")
    image_checks: Literal["none", "header", "decode"] = Field(
        "header", description="header: format and size (fast); decode: full decode (slow)"
    )
    workers: int = Field(8, ge=1, description="threads for the image checks (I/O-bound)")
    drop_unused_categories: bool = Field(
        True,
        description="a category without annotations in train (e.g. Roboflow's dataset-name category 0) is "
        "not a class; false keeps it as one",
    )
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


class StatisticsParams(Section):
    unmatchable_warning_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="warn when more of a split's boxes than this are smaller than the smallest anchor and "
        "reach no anchor at the RPN's foreground IoU",
    )


class EvaluationGroundTruthParams(Section):
    """What the evaluation splits are scored against. Official numbers need the annotations as published:
    every declared image, every box as written (pycocotools on the original JSON)."""

    ground_truth: Literal["published", "cleaned"] = Field(
        "published",
        description="published: the annotation file as written (the COCO protocol); cleaned: as ingest "
        "validated it (boxes clipped, degenerate boxes and unusable images dropped)",
    )
    unusable_images: Literal["error", "missed"] = Field(
        "error",
        description="a declared evaluation image whose file is missing, unreadable, unsafe or of another "
        "size: error stops the run; missed scores it with no detections (its boxes count as missed), "
        "recorded in coco_metrics",
    )


class IngestParams(Section):
    @field_validator("splits", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        """Given splits change single keys of the default train/val ones; other names are new splits."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {name: dict(paths) for name, paths in DEFAULT_SPLITS.items()}
        for name, split in value.items():
            merged[name] = None if split is None else {**merged.get(name, {}), **split}
        return merged

    data_root: str | None = Field(
        None, description="a dataset root (the card's --data_path); null: the synthetic demo (globals.yml)"
    )
    splits: dict[str, SplitParams | None] = Field(
        default_factory=lambda: {name: SplitParams(**paths) for name, paths in DEFAULT_SPLITS.items()},
        description="train, plus any evaluation splits by name (val, test, ...): {annotation_file, "
        "image_dir, drop_images_without_annotations}; COCO 2017's train and val by default",
    )
    validation: ValidationParams = ValidationParams()
    evaluation: EvaluationGroundTruthParams = EvaluationGroundTruthParams()
    demo: DemoParams = DemoParams()
    statistics: StatisticsParams = StatisticsParams()
