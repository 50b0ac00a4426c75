"""Benchmark: our COCO annotation validation + tables vs pycocotools' bare ``COCO()`` load of the same file.

Writes a synthetic annotation file the size of COCO train2017 (118,287 images, ~860k annotations with
polygons) into a temp dir, then measures each side in its own subprocess (wall time and peak RSS via
getrusage) and prints both figures and their ratio.
Targets: time ratio <= 1.0; our peak RSS <= 2x the JSON file's size.

    python benchmarks/bench_ingest.py            # COCO-train size (about a minute; pycocotools needs ~3 GB)
    python benchmarks/bench_ingest.py --scale 0.05
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COCO_TRAIN_IMAGES = 118_287
ANNOTATIONS_PER_IMAGE = 7.3  # 860,001 / 118,287 in instances_train2017.json
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
POLYGON_POOL = 4096  # distinct polygon strings, reused: a parser does the same work for each copy


def write_annotation_file(path: Path, scale: float, seed: int = 0) -> tuple[int, int]:
    """COCO-train-like JSON built from numpy arrays and string templates (no json.dumps of 860k dicts)."""
    rng = np.random.default_rng(seed)
    num_images = max(1, round(COCO_TRAIN_IMAGES * scale))
    image_ids = rng.choice(600_000, num_images, replace=False) + 1
    widths = rng.choice([640, 480, 500, 427, 612], num_images)
    heights = rng.choice([480, 640, 375, 333, 424], num_images)
    per_image = rng.poisson(ANNOTATIONS_PER_IMAGE - 1, num_images) + 1
    owner = np.repeat(np.arange(num_images), per_image)
    count = len(owner)
    w = widths[owner] * rng.uniform(0.02, 0.6, count) + 1
    h = heights[owner] * rng.uniform(0.02, 0.6, count) + 1
    x = rng.uniform(0, 1, count) * (widths[owner] - w)
    y = rng.uniform(0, 1, count) * (heights[owner] - h)
    crowd = rng.random(count) < 0.01
    categories = rng.choice(COCO_CATEGORY_IDS, count)
    polygons = []
    for _ in range(POLYGON_POOL):
        points = rng.uniform(0, 640, rng.integers(8, 40) * 2)
        polygons.append("[[" + ",".join(f"{v:.2f}" for v in points) + "]]")
    rle = '{"counts":[' + ",".join(str(v) for v in rng.integers(1, 400, 120)) + '],"size":[480,640]}'
    picks = rng.integers(0, POLYGON_POOL, count)

    image_template = (
        '{{"license":3,"file_name":"{id:012d}.jpg","coco_url":"http://images.cocodataset.org/train2017/{id:012d}.jpg",'
        '"height":{h},"width":{w},"date_captured":"2013-11-14 11:18:45","flickr_url":"http://farm3.staticflickr.com/'
        '2/{id}_0.jpg","id":{id}}}'
    )
    annotation_template = (
        '{{"segmentation":{seg},"area":{area:.4f},"iscrowd":{crowd},"image_id":{image},'
        '"bbox":[{x:.2f},{y:.2f},{w:.2f},{h:.2f}],"category_id":{cat},"id":{id}}}'
    )
    with path.open("w") as out:
        out.write('{"info":{"description":"synthetic COCO-train-sized benchmark"},"licenses":[],"images":[')
        out.write(
            ",".join(
                image_template.format(id=i, h=hh, w=ww)
                for i, hh, ww in zip(image_ids.tolist(), heights.tolist(), widths.tolist(), strict=True)
            )
        )
        out.write('],"annotations":[')
        out.write(
            ",".join(
                annotation_template.format(
                    seg=rle if c else polygons[p],
                    area=ww * hh * 0.7,
                    crowd=int(c),
                    image=i,
                    x=xx,
                    y=yy,
                    w=ww,
                    h=hh,
                    cat=k,
                    id=n,
                )
                for n, (p, c, i, xx, yy, ww, hh, k) in enumerate(
                    zip(
                        picks.tolist(),
                        crowd.tolist(),
                        image_ids[owner].tolist(),
                        x.tolist(),
                        y.tolist(),
                        w.tolist(),
                        h.tolist(),
                        categories.tolist(),
                        strict=True,
                    ),
                    start=1,
                )
            )
        )
        out.write('],"categories":[')
        out.write(
            ",".join(f'{{"supercategory":"thing","id":{c},"name":"class{c}"}}' for c in COCO_CATEGORY_IDS)
        )
        out.write("]}")
    return num_images, count


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, where there is one, is reset by exec (ru_maxrss is inherited from the
    parent across fork+exec on Linux, which would count the file writer's memory)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def worker(side: str, path: Path) -> None:
    """Runs one side in this (fresh) process and prints a JSON line with its figures."""
    if side == "ours":
        from frcnn_pipeline.data.coco import SplitSource, ValidationPolicy, read_coco_split

        baseline = _peak_rss_bytes()
        start = time.perf_counter()
        split = read_coco_split(
            SplitSource("train", path, path.parent), ValidationPolicy(image_checks="none")
        )
        seconds = time.perf_counter() - start
        detail = f"{len(split.images)} images, {len(split.annotations)} annotations"
        detail += f", {len(split.findings)} findings"
    else:
        from pycocotools.coco import COCO

        baseline = _peak_rss_bytes()
        start = time.perf_counter()
        coco = COCO(str(path))
        seconds = time.perf_counter() - start
        detail = f"{len(coco.imgs)} images, {len(coco.anns)} annotations"
    print(
        json.dumps(
            {"seconds": seconds, "peak_rss": _peak_rss_bytes(), "import_rss": baseline, "detail": detail}
        )
    )


def measure(side: str, path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", side, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of COCO train2017's size (default 1)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        path = Path(tmp) / "instances_train2017.json"
        start = time.perf_counter()
        num_images, num_annotations = write_annotation_file(path, args.scale)
        size = path.stat().st_size
        print(
            f"wrote {path.name}: {num_images:,} images, {num_annotations:,} annotations, "
            f"{size / 2**20:,.0f} MiB in {time.perf_counter() - start:.1f} s (scale {args.scale})"
        )
        with path.open("rb") as warm:  # page cache: neither side pays for the first disk read
            while warm.read(1 << 24):
                pass
        ours = measure("ours", path)
        reference = measure("pycocotools", path)

    print(f"{'':34}{'time (s)':>10}{'peak RSS (MiB)':>16}{'RSS / JSON size':>17}")
    for name, figures in (("ours: validate + tables", ours), ("pycocotools COCO() bare load", reference)):
        print(
            f"{name:34}{figures['seconds']:>10.2f}{figures['peak_rss'] / 2**20:>16,.0f}"
            f"{figures['peak_rss'] / size:>17.2f}   ({figures['detail']}; "
            f"{figures['import_rss'] / 2**20:,.0f} MiB after imports)"
        )
    ratio = ours["seconds"] / reference["seconds"]
    memory_ratio = ours["peak_rss"] / size
    added = (ours["peak_rss"] - ours["import_rss"]) / size
    print(f"time ratio ours / pycocotools: {ratio:.3f} (target <= 1.0: {'met' if ratio <= 1 else 'MISSED'})")
    print(
        f"our peak RSS / JSON size: {memory_ratio:.2f} "
        f"(target <= 2.0: {'met' if memory_ratio <= 2 else 'MISSED'}); "
        f"above the interpreter and imports: {added:.2f}"
    )


if __name__ == "__main__":
    main()
