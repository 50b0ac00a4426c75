"""Dropped, fixed and reported records: each shows its report row, and the good records survive untouched."""

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from frcnn_pipeline.data.coco import CocoFormatError, ValidationPolicy, build_ground_truth, read_coco_split


def only_row(split, check):
    rows = split.findings[split.findings["check"] == check]
    assert len(rows) == 1, split.findings
    return rows.iloc[0]


def assert_untouched(split, baseline, extra_annotation_ids=(), extra_image_ids=()):
    """The split's tables are the good split's, plus only the listed extra records."""
    images = split.images[~split.images["image_id"].isin(extra_image_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(images, baseline.images)
    annotations = split.annotations[~split.annotations["annotation_id"].isin(extra_annotation_ids)]
    pd.testing.assert_frame_equal(annotations.reset_index(drop=True), baseline.annotations)


def annotation(id_, image_id=1, category_id=1, bbox=(2.0, 2.0, 5.0, 5.0), **extra):
    return {"id": id_, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), **extra}


def add_image(doc, source, image_id, file_name, *, size=(40, 30), json_size=None, content=None):
    """Adds an image record; writes its file unless content is False (bytes: written as they are)."""
    width, height = json_size or size
    doc["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    path = source.image_dir / file_name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:
        Image.new("RGB", size, (10, 200, 30)).save(path)


def test_annotation_on_unknown_image(read, baseline, coco_doc):
    coco_doc["annotations"].append(annotation(20, image_id=99))
    split = read(coco_doc)
    row = only_row(split, "unknown_image")
    assert (row["severity"], row["image_id"], row["annotation_id"]) == ("dropped", 99, 20)
    assert "refers to image id 99, which is not in `images`" in row["message"]
    assert_untouched(split, baseline)


def test_annotation_with_undeclared_category(read, baseline, coco_doc):
    coco_doc["annotations"].append(annotation(20, category_id=5))
    row = only_row(split := read(coco_doc), "unknown_category")
    assert (row["severity"], row["annotation_id"]) == ("dropped", 20)
    assert "category id 5, which is not declared" in row["message"]
    assert_untouched(split, baseline)


@pytest.mark.parametrize(
    ("bbox", "written"),
    [
        ([1.0, 2.0, 3.0], "[1, 2, 3]"),
        ([1.0, None, 3.0, 4.0], "[1, null, 3, 4]"),
        ([], "[]"),
        ([1, 2, 3, 4, 5], "[1, 2, 3, 4, 5]"),
        # json.dump writes these literals and pycocotools reads them: one box, not the whole file, is bad.
        ([1.0, float("nan"), 3.0, 4.0], "[1, NaN, 3, 4]"),
        ([float("inf"), 2.0, float("-inf"), 4.0], "[Infinity, 2, -Infinity, 4]"),
    ],
)
def test_bbox_not_four_finite_numbers(read, baseline, coco_doc, bbox, written):
    coco_doc["annotations"].append(annotation(20, bbox=bbox))
    row = only_row(split := read(coco_doc), "invalid_bbox")
    assert (row["severity"], row["annotation_id"]) == ("dropped", 20)
    assert row["message"] == f"bbox is not 4 finite numbers: {written}"
    assert_untouched(split, baseline)


def test_non_finite_area_drops_the_box(read, baseline, coco_doc):
    coco_doc["annotations"].append(annotation(20, area=float("nan")))
    row = only_row(split := read(coco_doc), "invalid_bbox")
    assert (row["annotation_id"], row["message"]) == (
        20,
        "area is nan, not a finite number (bbox [2, 2, 5, 5])",
    )
    assert_untouched(split, baseline)


def test_non_finite_image_size_drops_the_image(read, baseline, coco_doc):
    coco_doc["images"].append({"id": 9, "file_name": "img9.jpg", "width": float("inf"), "height": 30})
    coco_doc["annotations"].append(annotation(20, image_id=9))
    row = only_row(split := read(coco_doc), "image_size_mismatch")
    assert row["image_id"] == 9 and "width/height infx30 must be positive finite numbers" in row["message"]
    assert_untouched(split, baseline)


def test_nan_inside_a_string_is_left_alone(read, coco_doc):
    coco_doc["categories"][0]["name"] = 'NaN "Infinity"'
    coco_doc["annotations"].append(annotation(20, bbox=[1.0, float("nan"), 3.0, 4.0]))
    split = read(coco_doc)
    assert split.categories["name"].tolist()[0] == 'NaN "Infinity"'
    assert only_row(split, "invalid_bbox")["annotation_id"] == 20


@pytest.mark.parametrize(
    ("bbox", "min_box_size"), [((2, 2, 0, 5), 0.0), ((2, 2, 5, -1), 0.0), ((2, 2, 2, 9), 3.0)]
)
def test_degenerate_or_too_small_bbox(read, baseline, coco_doc, bbox, min_box_size):
    coco_doc["annotations"].append(annotation(20, bbox=bbox))
    row = only_row(split := read(coco_doc, min_box_size=min_box_size), "degenerate_bbox")
    assert (row["severity"], row["annotation_id"]) == ("dropped", 20)
    assert f"width or height <= 0 or below min_box_size={min_box_size}" in row["message"]
    assert_untouched(split, baseline)


def test_missing_image_file_drops_the_image_and_its_annotations(write_split, baseline, coco_doc):
    source = write_split(coco_doc)
    add_image(coco_doc, source, 5, "gone.jpg", content=False)
    coco_doc["annotations"].append(annotation(20, image_id=5))
    split = read_coco_split(write_split(coco_doc))
    row = only_row(split, "missing_image_file")
    assert (row["severity"], row["image_id"]) == ("dropped", 5) and pd.isna(row["annotation_id"])
    assert (
        "gone.jpg): file not found" in row["message"] and "dropped with its 1 annotation(s)" in row["message"]
    )
    assert_untouched(split, baseline)


def test_missing_file_not_seen_when_image_checks_are_off(write_split, coco_doc):
    source = write_split(coco_doc)
    add_image(coco_doc, source, 5, "gone.jpg", content=False)
    split = read_coco_split(write_split(coco_doc), ValidationPolicy(image_checks="none"))
    assert 5 in split.images["image_id"].tolist()
    assert "missing_image_file" not in split.findings["check"].tolist()


def test_undecodable_image(write_split, baseline, coco_doc):
    source = write_split(coco_doc)
    add_image(coco_doc, source, 5, "text.jpg", content=b"this is not a JPEG")
    row = only_row(split := read_coco_split(write_split(coco_doc)), "unreadable_image")
    assert (row["severity"], row["image_id"]) == ("dropped", 5)
    assert "cannot decode" in row["message"] and "text.jpg" in row["message"]
    assert_untouched(split, baseline)


def test_truncated_image_needs_full_decoding(write_split, baseline, coco_doc, tmp_path):
    source = write_split(coco_doc)
    noise = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    # Cut inside the compressed data: the header (format, size) is intact.
    add_image(coco_doc, source, 5, "cut.jpg", json_size=(200, 150), content=whole[: len(whole) // 2])
    coco_doc["annotations"].append(annotation(20, image_id=5))
    header_only = read_coco_split(write_split(coco_doc))
    assert 5 in header_only.images["image_id"].tolist()
    decoded = read_coco_split(write_split(coco_doc), ValidationPolicy(image_checks="decode"))
    row = only_row(decoded, "unreadable_image")
    assert row["image_id"] == 5 and "truncated" in row["message"]
    assert_untouched(decoded, baseline)


def test_image_size_differs_from_json(write_split, baseline, coco_doc):
    source = write_split(coco_doc)
    add_image(coco_doc, source, 5, "big.jpg", size=(40, 30), json_size=(50, 30))
    coco_doc["annotations"].append(annotation(20, image_id=5))
    row = only_row(split := read_coco_split(write_split(coco_doc)), "image_size_mismatch")
    assert (row["severity"], row["image_id"]) == ("dropped", 5)
    assert "is 40x30 (EXIF orientation applied) but the JSON says 50x30" in row["message"]
    assert_untouched(split, baseline)


def test_decode_checks_keep_sixteen_bit_drop_unconvertible_and_report_transparent(
    write_split, baseline, coco_doc
):
    source = write_split(coco_doc)
    images = {
        5: ("scan.png", np.full((30, 40), 40000, np.uint16)),
        6: ("float.tif", np.full((30, 40), 900.0, np.float32)),
        7: ("logo.png", np.dstack([np.full((30, 40, 3), 200, np.uint8), np.eye(30, 40, 0, np.uint8) * 255])),
    }
    for image_id, (file_name, pixels) in images.items():
        Image.fromarray(pixels).save(source.image_dir / file_name)
        add_image(coco_doc, source, image_id, file_name, content=False)
        coco_doc["annotations"].append(annotation(20 + image_id, image_id=image_id))
    baseline_checks = set(baseline.findings["check"])
    header_only = read_coco_split(write_split(coco_doc))
    assert set(header_only.findings["check"]) == baseline_checks, "headers alone find nothing"

    split = read_coco_split(write_split(coco_doc), ValidationPolicy(image_checks="decode"))
    row = only_row(split, "unconvertible_image")
    assert (row["severity"], row["image_id"]) == ("dropped", 6)
    assert "float.tif: mode F (32-bit float) has values 900..900, outside Pillow's 0-255" in row["message"]
    row = only_row(split, "transparent_image")
    assert (row["severity"], row["image_id"]) == ("reported", 7)
    assert "logo.png: 97.5% of its pixels are transparent or translucent: they are shown over black" in str(
        row["message"]
    )
    assert set(split.findings["check"]) - baseline_checks == {"unconvertible_image", "transparent_image"}
    assert_untouched(split, baseline, extra_annotation_ids=[25, 27], extra_image_ids=[5, 7])


@pytest.mark.parametrize(
    "file_name", ["../outside.jpg", "sub/../../outside.jpg", "/tmp/outside.jpg", "C:\\x.jpg"]
)
def test_file_name_escaping_the_image_folder(write_split, baseline, coco_doc, tmp_path, file_name):
    source = write_split(coco_doc)
    Image.new("RGB", (40, 30)).save(source.image_dir.parent / "outside.jpg")  # exists, but must not be read
    coco_doc["images"].append({"id": 5, "file_name": file_name, "width": 40, "height": 30})
    row = only_row(split := read_coco_split(write_split(coco_doc)), "unsafe_file_name")
    assert (row["severity"], row["image_id"]) == ("dropped", 5)
    assert "escapes the image folder" in row["message"]
    assert_untouched(split, baseline)


def test_box_past_the_border_is_clipped(read, baseline, coco_doc):
    coco_doc["annotations"].append(annotation(20, image_id=2, bbox=(30.0, -2.0, 20.0, 22.0), area=440.0))
    split = read(coco_doc)
    row = only_row(split, "clipped_bbox")
    assert (row["severity"], row["annotation_id"]) == ("fixed", 20)
    assert (
        "bbox [30, -2, 20, 22] runs past the 40x30 image border; clipped to xyxy [30, 0, 40, 20]"
        in row["message"]
    )
    clipped = split.annotations.set_index("annotation_id").loc[20]
    assert clipped[["x1", "y1", "x2", "y2", "area"]].tolist() == [30.0, 0.0, 40.0, 20.0, 440.0]
    ground_truth = {a["id"]: a["bbox"] for a in build_ground_truth(split)["annotations"]}
    assert ground_truth[20] == [30.0, 0.0, 10.0, 20.0]
    assert_untouched(split, baseline, extra_annotation_ids=[20])


def test_box_outside_the_image_is_dropped(read, baseline, coco_doc):
    coco_doc["annotations"].append(annotation(20, bbox=(45.0, 5.0, 5.0, 5.0)))
    row = only_row(split := read(coco_doc), "bbox_outside_image")
    assert (row["severity"], row["annotation_id"]) == ("dropped", 20)
    assert "lies outside the 40x30 image" in row["message"]
    assert "clipped_bbox" not in split.findings["check"].tolist()
    assert_untouched(split, baseline)


@pytest.mark.parametrize(("drop", "severity"), [(True, "dropped"), (False, "reported")])
def test_image_without_annotations_kept_or_dropped(write_split, baseline, coco_doc, drop, severity):
    source = write_split(coco_doc)
    add_image(coco_doc, source, 5, "empty.jpg")
    add_image(coco_doc, source, 6, "crowd_only.jpg")
    coco_doc["annotations"].append(annotation(20, image_id=6, iscrowd=1))
    split = read_coco_split(write_split(coco_doc), ValidationPolicy(drop_images_without_annotations=drop))
    rows = split.findings[split.findings["check"] == "image_without_annotations"]
    assert rows["image_id"].tolist() == [5, 6] and set(rows["severity"]) == {severity}
    assert "(1 crowd)" in rows["message"].iloc[1]
    if drop:
        assert_untouched(split, baseline)
    else:
        assert split.images["image_id"].tolist()[-2:] == [5, 6]
        assert_untouched(split, baseline, extra_annotation_ids=[20], extra_image_ids=[5, 6])


def test_crowd_annotation_kept_with_flag(read, baseline, coco_doc):
    coco_doc["annotations"].append(
        annotation(20, iscrowd=1, segmentation={"counts": [1, 2], "size": [30, 40]})
    )
    split = read(coco_doc)
    row = only_row(split, "crowd_annotation")
    assert (row["severity"], row["annotation_id"]) == ("reported", 20)
    assert split.annotations.set_index("annotation_id").loc[20, "iscrowd"]
    assert {a["id"]: a["iscrowd"] for a in build_ground_truth(split)["annotations"]}[20] == 1
    assert_untouched(split, baseline, extra_annotation_ids=[20])


def test_unused_category_is_kept_as_a_class_when_asked(read, coco_doc):
    coco_doc["categories"].append({"id": 9, "name": "fish"})
    split = read(coco_doc, drop_unused_categories=False)
    row = only_row(split, "unused_category")
    assert row["severity"] == "reported"
    assert row["message"] == "category 9 (fish) is declared but has no annotation; kept as a class"
    assert split.categories["category_id"].tolist() == [1, 3, 7, 9]
    assert split.categories["supercategory"].tolist()[-1] == ""


def roboflow_like(doc: dict) -> dict:
    """Roboflow declares the dataset's own name as category 0 (supercategory "none") and annotates 1..K."""
    doc = copy.deepcopy(doc)
    ids = {1: 1, 3: 2, 7: 3}
    doc["categories"] = [{"id": 0, "name": "shapes-dataset", "supercategory": "none"}] + [
        {**c, "id": ids[c["id"]]} for c in doc["categories"]
    ]
    for record in doc["annotations"]:
        record["category_id"] = ids[record["category_id"]]
    return doc


def test_unused_category_is_dropped_from_the_classes(read, baseline, coco_doc):
    split = read(roboflow_like(coco_doc))
    row = only_row(split, "unused_category")
    assert (row["severity"], row["message"]) == (
        "dropped",
        "category 0 (shapes-dataset) is declared but has no annotation; not a class "
        "(ingest.validation.drop_unused_categories)",
    )
    assert split.categories["category_id"].tolist() == [1, 2, 3]
    assert split.categories["label"].tolist() == [0, 1, 2]
    assert split.annotations["label"].tolist() == baseline.annotations["label"].tolist()
    assert "noncontiguous_category_ids" not in split.findings["check"].tolist()  # 1..K after the drop

    val = read(roboflow_like(coco_doc), name="val", categories=split.categories)
    assert val.findings["check"].tolist() == ["unused_category"]
    assert val.annotations["label"].tolist() == baseline.annotations["label"].tolist()
    coco_doc = roboflow_like(coco_doc)
    coco_doc["annotations"][0]["category_id"] = 0
    with pytest.raises(
        CocoFormatError, match=r"annotates 1 box\(es\) with categories \[0\] that are not classes"
    ):
        read(coco_doc, name="val", categories=split.categories)


def test_zero_based_contiguous_ids_are_reported_as_they_are(read, coco_doc):
    coco_doc["categories"].append({"id": 0, "name": "fish"})
    coco_doc["annotations"].append(annotation(20, category_id=0))
    for record in coco_doc["categories"]:
        record["id"] = {0: 0, 1: 1, 3: 2, 7: 3}[record["id"]]
    for record in coco_doc["annotations"]:
        record["category_id"] = {0: 0, 1: 1, 3: 2, 7: 3}[record["category_id"]]
    row = only_row(read(coco_doc), "noncontiguous_category_ids")
    assert row["message"] == (
        "category ids are 0..3 (contiguous): label = category_id - 0 (see the categories table)"
    )


def test_annotation_id_zero_is_renumbered_in_the_ground_truth(read, baseline, coco_doc):
    coco_doc["annotations"].append(annotation(0))
    split = read(coco_doc)
    row = only_row(split, "annotation_id_zero")
    assert (row["severity"], row["annotation_id"]) == ("reported", 0)
    assert 0 in split.annotations["annotation_id"].tolist()
    assert [a["id"] for a in build_ground_truth(split)["annotations"]] == [1, 2, 3, 4, 5, 6]
    assert_untouched(split, baseline, extra_annotation_ids=[0])


def test_iscrowd_as_boolean_and_absent_area_are_accepted(read, coco_doc):
    coco_doc["annotations"][0]["iscrowd"] = True
    del coco_doc["annotations"][1]["area"]
    annotations = read(coco_doc).annotations.set_index("annotation_id")
    assert annotations.loc[10, "iscrowd"]
    assert annotations.loc[11, "area"] == 15.0 * 20.0
