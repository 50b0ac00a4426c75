"""The 12 COCO box metrics as pycocotools computes them from an annotation file: the reference our evaluator
must equal."""

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def pycocotools_stats(annotation_file, detections: list[dict]) -> list[float]:
    """COCOeval's `stats` for `detections` against `annotation_file`, areas filled in where missing."""
    reference_file = COCO(str(annotation_file))
    for record in reference_file.dataset["annotations"]:  # pycocotools needs the area the file may lack
        record.setdefault("area", record["bbox"][2] * record["bbox"][3])
    reference_file.createIndex()
    reference = COCOeval(reference_file, reference_file.loadRes(detections), "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    return reference.stats.tolist()
