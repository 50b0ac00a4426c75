"""Fatal problems stop with an error naming the file, the record and the fix."""

import json
import re

import pytest

from frcnn_pipeline.data.coco import CocoFormatError, json_file, read_coco_split


def test_truncated_json(read, coco_doc):
    text = json.dumps(coco_doc)
    with pytest.raises(
        CocoFormatError, match=r"annotations\.json: unreadable or truncated JSON.*Fix: re-download"
    ):
        read(text[: len(text) // 2])


def test_missing_annotation_file(write_split, coco_doc, tmp_path):
    source = write_split(coco_doc)
    source.annotation_file.unlink()
    with pytest.raises(
        CocoFormatError, match=r"annotations\.json: cannot read the annotation file.*data_root"
    ):
        read_coco_split(source)


def test_missing_top_level_key(read, coco_doc):
    del coco_doc["annotations"]
    with pytest.raises(CocoFormatError, match="missing required field `annotations`"):
        read(coco_doc)


def test_not_an_object(read):
    with pytest.raises(CocoFormatError, match="Expected `object`, got `array`"):
        read("[]")


def test_missing_required_field_names_the_annotation(read, coco_doc):
    del coco_doc["annotations"][2]["category_id"]
    message = (
        r"annotation id 12: missing field or wrong type: .*`category_id`.*\$\.annotations\[2\].*Fix: correct"
    )
    with pytest.raises(CocoFormatError, match=message):
        read(coco_doc)


@pytest.mark.parametrize(
    "case",
    [
        ("images", 1, "width", "40", "image id 2"),
        ("annotations", 3, "bbox", "1,2,3,4", "annotation id 13"),
        ("annotations", 0, "image_id", 1.5, "annotation id 10"),
        ("categories", 2, "name", 7, "category id 7"),
    ],
)
def test_wrong_type_names_the_record_and_path(read, coco_doc, case):
    section, index, key, value, record = case
    coco_doc[section][index][key] = value
    with pytest.raises(CocoFormatError) as error:
        read(coco_doc)
    assert f"{record}: missing field or wrong type" in str(error.value)
    assert f"$.{section}[{index}].{key}" in str(error.value)


def test_duplicate_image_ids(read, coco_doc):
    coco_doc["images"][2]["id"] = 2
    with pytest.raises(
        CocoFormatError, match=r"duplicate image ids \[2\] \(2: img2\.jpg; 2: img3\.jpg\).*unique id"
    ):
        read(coco_doc)


def test_duplicate_annotation_ids(read, coco_doc):
    coco_doc["annotations"][4]["id"] = 10
    with pytest.raises(CocoFormatError, match=r"duplicate annotation ids \[10\]; 2 records share an id"):
        read(coco_doc)


def test_duplicate_category_ids(read, coco_doc):
    coco_doc["categories"][2]["id"] = 3
    with pytest.raises(CocoFormatError, match=r"duplicate category ids \[3\] \(3: dog; 3: bird\)"):
        read(coco_doc)


def test_no_categories(read, coco_doc):
    coco_doc["categories"] = []
    with pytest.raises(CocoFormatError, match="declares no categories"):
        read(coco_doc)


def test_split_left_without_images(write_split, coco_doc):
    source = write_split(coco_doc)
    for image in source.image_dir.iterdir():
        image.unlink()
    with pytest.raises(CocoFormatError) as error:
        read_coco_split(source)
    message = str(error.value)
    assert "split 'train' has no usable image after dropping (4 declared" in message
    assert "'missing_image_file': 4" in message
    assert "Fix: check the image folder" in message


def test_val_categories_must_agree_with_train(read, baseline, coco_doc):
    coco_doc["categories"][1]["name"] = "wolf"
    coco_doc["categories"].append({"id": 9, "name": "fish"})
    with pytest.raises(CocoFormatError) as error:
        read(coco_doc, name="val", categories=baseline.categories)
    assert "differ from the project's (taken from the train split)" in str(error.value)
    assert "extra ids [9], renamed ids [(3, 'dog', 'wolf')]" in str(error.value)


def test_escalated_check_is_fatal(read, coco_doc):
    coco_doc["annotations"][1]["bbox"] = [20.0, 5.0, 0.0, 20.0]
    with pytest.raises(CocoFormatError) as error:
        read(coco_doc, severity={"degenerate_bbox": "fatal"})
    expected = (
        r"1 finding\(s\) made fatal .*\[degenerate_bbox\] image 1, annotation 11: bbox \[20, 5, 0, 20\]"
    )
    assert re.search(expected, str(error.value))


def test_error_path_is_file_wide_when_annotations_are_decoded_in_chunks(read, coco_doc, monkeypatch):
    monkeypatch.setattr(json_file, "_ANNOTATION_CHUNK", 2)
    coco_doc["annotations"][3]["image_id"] = "3"
    with pytest.raises(CocoFormatError) as error:
        read(coco_doc)
    assert "annotation id 13: missing field or wrong type" in str(error.value)
    assert "$.annotations[3].image_id" in str(error.value)
