"""torchvision's COCO checkpoint through Kedro: `weights` then `predict_initial_weights` under the
`torchvision_coco` recipe give torchvision's own detections on a user's photos, bit for bit; with
`predictor_rows: labels` (the rows of the ingested categories only), those of torchvision's model cut to
the same rows.

The real checkpoint (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth) cannot be downloaded here, so the test saves
one with its exact layout: the model torchvision's builder makes for COCO_V1 weights (frozen BN, eps 0 from
`overwrite_eps`, 91 classes by COCO category id), with seeded weights in a trained model's ranges.
"""

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro_params import nested
from PIL import Image
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torchvision_like import photo, realistic_

PROJECT = Path(__file__).resolve().parents[3]
COCO_NAMES = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # by category id, 0: background
NOT_IN_COCO_2017 = [category_id for category_id, name in enumerate(COCO_NAMES) if name == "N/A"]
# COCO 2017's 80 categories, as ingest writes them from instances_*.json: labels 0..79 in id order.
COCO_IDS = [i for i, name in enumerate(COCO_NAMES) if i and name != "N/A"]
CATEGORIES = pd.DataFrame(
    {
        "label": range(len(COCO_IDS)),
        "category_id": COCO_IDS,
        "name": [COCO_NAMES[i] for i in COCO_IDS],
        "supercategory": "coco",
    }
)
# H x W; at 288 px padded to 448 x 288 and 288 x 448: 9 cells of 32 (P6's inferred stride is off) and 14.
PHOTOS = {"portrait": (600, 400), "landscape": (400, 600)}
# Smaller than the recipe's 800 px and 1,000 proposals to stay fast; the same on both sides.
MIN_SIZE, MAX_SIZE, PROPOSALS = 288, 480, 300


def coco_detector() -> FasterRCNN:
    """fasterrcnn_resnet50_fpn as its builder makes it for COCO_V1 weights, with seeded weights: frozen BN
    statistics far from 0 and 1 (eps 0 then matters), centred class rows sharp enough for confident scores,
    and the rows of the ids COCO 2017 never used low, as training leaves them."""
    torch.manual_seed(0)
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = FasterRCNN(
        _resnet_fpn_extractor(body, 3),
        num_classes=91,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        rpn_post_nms_top_n_test=PROPOSALS,
    )
    overwrite_eps(model, 0.0)
    realistic_(model)
    with torch.no_grad():
        scores = model.roi_heads.box_predictor.cls_score
        scores.weight.sub_(scores.weight.mean(1, keepdim=True)).mul_(100)
        scores.weight[NOT_IN_COCO_2017] = 0.0
        scores.bias[NOT_IN_COCO_2017] = -10.0
    return model.eval()


def with_rows_of(model: FasterRCNN, category_ids: list[int]) -> FasterRCNN:
    """torchvision's model with its box predictor cut to the background and `category_ids`' rows."""
    rows = torch.tensor([0, *category_ids])
    source = model.roi_heads.box_predictor
    predictor = FastRCNNPredictor(source.cls_score.in_features, len(rows))
    with torch.no_grad():
        blocks = (rows[:, None] * 4 + torch.arange(4)).flatten()
        predictor.cls_score.weight.copy_(source.cls_score.weight[rows])
        predictor.cls_score.bias.copy_(source.cls_score.bias[rows])
        predictor.bbox_pred.weight.copy_(source.bbox_pred.weight[blocks])
        predictor.bbox_pred.bias.copy_(source.bbox_pred.bias[blocks])
    cut = copy.deepcopy(model)
    cut.roi_heads.box_predictor = predictor
    return cut.eval()


@pytest.fixture(scope="module", params=["coco_category_ids", "labels"])
def predicted(request, module_tmp):
    """The checkpoint saved as torchvision's file, the photos, and `predict_initial_weights`' results JSON,
    for each `predictor_rows`."""
    tmp = module_tmp(request.param)
    checkpoint = tmp / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    model = coco_detector()
    torch.save(model.state_dict(), checkpoint)
    photos = {}
    (tmp / "photos").mkdir()
    for seed, (orientation, size) in enumerate(PHOTOS.items()):
        photos[orientation] = photo(*size, seed, objects=8, min_side=30)
        Image.fromarray(photos[orientation].permute(1, 2, 0).numpy()).save(
            tmp / "photos" / f"{orientation}.png"
        )
    root = project_with_coco_categories(tmp / "project")
    params = {
        "weights.source": str(checkpoint),
        "model.input.min_size_test": MIN_SIZE,
        "model.input.max_size": MAX_SIZE,
        "model.rpn.post_nms_topk_test": PROPOSALS,
        "predict.images": str(tmp / "photos"),
        "predict.score_threshold": 0.0,  # every detection the model returns
        "predict.inference.batch_size": 1,
        "model.roi_heads.predictor_rows": request.param,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for pipeline in ("weights", "predict_initial_weights"):
            with KedroSession.create(root, env="coco", runtime_params=nested(params)) as session:
                session.run(pipeline_names=[pipeline])
    [results] = root.glob("data/07_model_output/predict_initial_weights/prediction_results.json/*/*")
    report = pd.read_csv(root / "data/08_reporting/weights_conversion_report.csv")
    if request.param == "labels":
        model = with_rows_of(model, COCO_IDS)
    return model, photos, json.loads(results.read_text()), report, root, request.param


def project_with_coco_categories(root: Path) -> Path:
    """A project copy whose env `coco` picks the torchvision_coco recipe, with COCO's categories table where
    ingest writes it (the photos are the user's, so nothing else of ingest is needed)."""
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "conf" / "coco").mkdir()
    (root / "conf" / "coco" / "globals.yml").write_text("recipe: torchvision_coco\n")
    (root / "src").mkdir()  # the package itself is the one under test, already on the path
    shutil.copy2(PROJECT / "pyproject.toml", root)
    (root / "data" / "03_primary").mkdir(parents=True)
    CATEGORIES.to_parquet(root / "data" / "03_primary" / "categories.parquet")
    bootstrap_project(root)
    return root


def detections_of(results: dict, orientation: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    [image] = [image for image in results["images"] if Path(image["path"]).stem == orientation]
    found = image["detections"]
    boxes = torch.tensor([d["bbox_xyxy"] for d in found], dtype=torch.float32)
    return (
        boxes,
        torch.tensor([d["score"] for d in found], dtype=torch.float32),
        [d["category_id"] for d in found],
    )


@pytest.mark.parametrize("orientation", PHOTOS)
def test_predictions_are_torchvisions_bit_for_bit(predicted, orientation):
    """Against torchvision's model on `image / 255`, one image per call: with all 91 rows (the checkpoint
    as it is) or cut to the 80 categories' rows (`predictor_rows: labels`), boxes, scores and category ids
    identical."""
    model, photos, results, _, _, predictor_rows = predicted
    with torch.no_grad():
        [reference] = model([photos[orientation] / 255])
    expected_ids = reference["labels"].tolist()  # torchvision's labels: COCO category ids, or rows 1..80
    if predictor_rows == "labels":
        expected_ids = [COCO_IDS[row - 1] for row in expected_ids]
    boxes, scores, category_ids = detections_of(results, orientation)
    assert len(category_ids) == 100 and len(set(category_ids)) > 1
    assert torch.equal(boxes, reference["boxes"])
    assert torch.equal(scores, reference["scores"])
    assert category_ids == expected_ids


def test_the_report_maps_the_coco_rows_and_predict_keeps_its_own_outputs(predicted):
    _, _, results, report, root, predictor_rows = predicted
    rows = report[report.target_key.str.startswith("roi_heads.box_predictor.")]
    assert len(rows) == 4 and set(rows.status) == {"mapped"}
    if predictor_rows == "labels":
        assert set(rows.note) == {
            f"COCO rows by category id: 91 -> 81 (background row 0, then ids {COCO_IDS} by label)"
        }
        assert "roi_heads.label_rows" not in set(report.target_key)
    else:
        assert set(rows.source_shape) == {"(91, 1024)", "(91,)", "(364, 1024)", "(364,)"}
        [label_rows] = report[report.target_key == "roi_heads.label_rows"].itertuples()
        assert label_rows.note == f"rows by COCO category id: background 0, then ids {COCO_IDS} by label"
    assert set(report.status) == {"mapped"}
    assert results["model"]["kind"] == "initial_weights"
    assert not (root / "data/07_model_output/predict").exists(), "predict's outputs are left alone"
    assert (
        len(list(root.glob("data/07_model_output/predict_initial_weights/prediction_images/*/*/*.png"))) == 2
    )
