"""`kedro viz build` on a copy of the project, rendered offline in headless Chromium.

The build runs on a copy in tmp_path because it writes `build/` (and the ingest run writes `data/`) into the
project root. The copy's `src/` comes first on the path (Kedro's bootstrap also puts it first), so the code
that is built is the code that was copied, not whatever the editable install points at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import BrowsedPage, browse, needs_chromium, serve

from frcnn_pipeline.cli import NOT_PRODUCED_PREVIEW, not_produced_note

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The layers of the issue, in the order COCO flows through them.
KNOWN_LAYERS = ("raw", "intermediate", "primary", "model input", "models", "model output", "reporting")
VALIDATION_REPORT_COLUMNS = ["split", "severity", "check", "image_id", "annotation_id", "message"]
TABLE_PREVIEWS = (
    "validation_report",
    "evaluate.val.per_category_ap",
    "dataset_class_statistics",
    "evaluate.val.error_breakdown",
)
METRIC_PREVIEWS = ("evaluate.val.coco_metrics", "training_metrics")
PLOT_PREVIEWS = (
    "training_curves",
    "evaluate.val.detection_samples",
    "dataset_box_sizes",
    "evaluate.val.worst_images",
)
PREVIEWED = TABLE_PREVIEWS + METRIC_PREVIEWS + PLOT_PREVIEWS
# Whole COCO JSONs: megabytes in every page load.
NOT_PREVIEWED = ("val_ground_truth", "evaluate.val.detections")
MAX_PREVIEW_BYTES = 1_000_000
RUN_TIMEOUT_S = 300
VIRTUAL_TIME_BUDGET_MS = 10_000

# One interpreter lists the pipelines, what each makes and the preview type of each catalog dataset (as
# kedro-viz reads it: the return annotation of its preview()), then runs ingest (cheap on the demo data), so
# the validation report exists to be previewed; the build itself goes through the real `kedro viz build`.
LIST_AND_INGEST_SCRIPT = """
import inspect
import json
import sys
from pathlib import Path
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
import frcnn_pipeline
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession

def preview_type(dataset):
    annotation = inspect.signature(dataset.preview).return_annotation if hasattr(dataset, "preview") else None
    return getattr(annotation, "__name__", str(annotation))

with KedroSession.create(Path.cwd()) as session:
    catalog = session.load_context().catalog
    print("REGISTRY", json.dumps({
        "package_file": frcnn_pipeline.__file__,
        "pipelines": sorted(pipelines),
        "nodes": [{"name": n.name, "namespace": n.namespace} for n in pipelines["__default__"].nodes],
        "outputs": {name: sorted(pipelines[name].all_outputs()) for name in pipelines},
        "preview_types": {name: preview_type(catalog[name]) for name in sys.argv[1:]},
    }), flush=True)
    if "ingest" in pipelines:
        session.run(pipeline_name="ingest")
"""


# ---------------------------------------------------------------------------------------------- project copy


def _copy_project(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "src", destination / "src", ignore=ignore)
    # conf/local holds a developer's secrets and overrides: never copied, but the run env must exist.
    shutil.copytree(PROJECT_ROOT / "conf", destination / "conf", ignore=shutil.ignore_patterns("local"))
    (destination / "conf" / "local").mkdir()
    for name in ("pyproject.toml", "README.md", ".telemetry"):
        if (PROJECT_ROOT / name).exists():
            shutil.copy2(PROJECT_ROOT / name, destination / name)
    (destination / "data").mkdir()
    return destination


def _kedro_env(project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": os.pathsep.join([str(project / "src"), os.environ.get("PYTHONPATH", "")]),
        # kedro-viz writes a telemetry user id under the user config dir even when telemetry is off.
        "XDG_CONFIG_HOME": str(project / ".xdg"),
        "MPLBACKEND": "Agg",
        "COLUMNS": "200",
    }


def _run(args: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=project,
        env=_kedro_env(project),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


class VizBuild:
    """The copied project after the ingest pipeline and `kedro viz build --include-previews` ran in it."""

    def __init__(self, project: Path):
        self.project = project
        self.ingest = _run([sys.executable, "-c", LIST_AND_INGEST_SCRIPT, *PREVIEWED], project)
        registry = [line for line in self.ingest.stdout.splitlines() if line.startswith("REGISTRY ")]
        assert registry, f"listing the pipelines failed:\n{self.ingest.stderr[-4000:]}"
        self.registry = json.loads(registry[0].removeprefix("REGISTRY "))
        self.build_process = _run([sys.executable, "-m", "kedro", "viz-site", "--include-previews"], project)
        self.build = project / "build"

    def main(self) -> dict:
        return json.loads((self.build / "api" / "main").read_text(encoding="utf-8"))

    def node_details(self, node_id: str) -> dict:
        return json.loads((self.build / "api" / "nodes" / node_id).read_text(encoding="utf-8"))

    def data_node_ids(self) -> dict[str, str]:
        return {node["name"]: node["id"] for node in self.main()["nodes"] if node["type"] == "data"}

    def pipeline(self, pipeline_id: str) -> dict:
        return json.loads((self.build / "api" / "pipelines" / pipeline_id).read_text(encoding="utf-8"))

    def not_produced(self) -> dict[str, str]:
        """The preview of each dataset, in any pipeline, that the build marked as not produced yet."""
        marked = {}
        for pipeline in (self.build / "api" / "pipelines").iterdir():
            for node in json.loads(pipeline.read_text(encoding="utf-8"))["nodes"]:
                details = self.node_details(node["id"]) if node["type"] == "data" else {}
                if details.get("preview_type") == NOT_PRODUCED_PREVIEW:
                    marked[node["name"]] = details["preview"]
        return marked


@pytest.fixture(scope="module")
def viz(module_tmp) -> VizBuild:
    return VizBuild(_copy_project(module_tmp("viz") / "project"))


# ------------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def site_url(viz: VizBuild) -> Iterator[str]:
    with serve(viz.build) as url:
        yield url


class RenderedPage(BrowsedPage):
    """What headless Chromium rendered of the kedro-viz site, and every network event it logged."""

    def __init__(self, dom: str, net_log: dict, origin: str):
        super().__init__(dom, net_log, origin)
        self.elements = _Elements()
        self.elements.feed(dom)


class _Elements(HTMLParser):
    """Collects the flowchart's nodes, the layer labels, the filter rows and preview table headers."""

    def __init__(self):
        super().__init__()
        self.flowchart_nodes: dict[str, dict[str, str | None]] = {}
        self.layer_labels: set[str] = set()
        self.filter_ids: set[str] = set()
        self.preview_headers: list[str] = []
        self._in_preview_header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        data_id = attributes.get("data-id") or ""
        if tag == "g" and "pipeline-node" in classes:
            self.flowchart_nodes[data_id] = attributes
        if data_id.startswith("layer-label--"):
            self.layer_labels.add(data_id.removeprefix("layer-label--"))
        if tag == "label" and "toggle-control--kind-filter" in classes:
            self.filter_ids.add(attributes.get("for") or "")
        self._in_preview_header = tag == "th" and "preview-table__header" in classes

    def handle_data(self, data: str) -> None:
        if self._in_preview_header:
            self.preview_headers.append(data)
            self._in_preview_header = False


def _render(site_url: str, query: str, scratch: Path) -> RenderedPage:
    dom, net_log = browse(
        f"{site_url}/{query}",
        scratch,
        # Tall enough that the sidebar's virtualised lists (tags, layers) render every row.
        window_size="1600,4000",
        virtual_time_budget_ms=VIRTUAL_TIME_BUDGET_MS,
    )
    assert "pipeline-flowchart" in dom, f"kedro-viz did not start:\n{dom[-2000:]}"
    return RenderedPage(dom, net_log, site_url)


def _assert_stayed_on_machine(page: RenderedPage) -> None:
    page.assert_stayed_on_machine()


@pytest.fixture(scope="module")
def overview(site_url: str, module_tmp) -> RenderedPage:
    """The default view: each top-level namespace collapsed into one modular-pipeline node."""
    return _render(site_url, "?pid=__default__", module_tmp("chromium-overview"))


@pytest.fixture(scope="module")
def expanded(site_url: str, module_tmp) -> RenderedPage:
    return _render(site_url, "?pid=__default__&expandAllPipelines=true", module_tmp("chromium-expanded"))


# --------------------------------------------------------------------------------------------------- tests


def test_build_runs_the_copied_code_and_writes_the_site(viz: VizBuild) -> None:
    assert Path(viz.registry["package_file"]).is_relative_to(viz.project / "src")
    # `kedro viz build` exits 0 even when it fails, so its message and its output are what tell.
    output = viz.build_process.stdout + viz.build_process.stderr
    assert viz.build_process.returncode == 0, output[-4000:]
    assert "Failed to build" not in output, output[-4000:]
    assert (viz.build / "index.html").is_file()
    task_names = {node["full_name"] for node in viz.main()["nodes"] if node["type"] == "task"}
    assert task_names == {node["name"] for node in viz.registry["nodes"]}


def _not_produced_line(viz: VizBuild) -> tuple[int, list[str]]:
    """The build's one line about the datasets not produced yet: how many, and the names it shows."""
    output = viz.build_process.stdout + viz.build_process.stderr
    assert "could not be previewed" not in output, output[-4000:]
    [line] = [line for line in output.splitlines() if "not produced yet" in line]
    count, names = int(line.split()[0]), line.split(": ", 1)[1].split(" and ")[0].split(", ")
    assert line.endswith(f"and {count - len(names)} more")
    return count, names


def test_datasets_not_produced_yet_are_named_once_without_a_warning_each(viz: VizBuild) -> None:
    """Only ingest ran: the models, metrics and plots have no version yet. One line names them."""
    count, names = _not_produced_line(viz)
    assert count > 20 and len(names) == 6
    assert names == sorted(names) and "categories" not in names  # ingest wrote it: it is previewed


def test_datasets_not_produced_yet_say_so_and_name_the_pipeline_that_makes_them(viz: VizBuild) -> None:
    count, shown = _not_produced_line(viz)
    marked = viz.not_produced()
    assert len(marked) == count and set(shown) <= marked.keys()
    assert "categories" not in marked and "validation_report" not in marked  # ingest wrote them
    outputs = viz.registry["outputs"]
    for name, preview in marked.items():
        makers = [
            pipeline
            for pipeline in sorted(outputs)
            if pipeline != "__default__" and name in outputs[pipeline]
        ]
        assert makers and preview == not_produced_note(makers), name
    assert "run:\n  kedro run --pipeline evaluate\n" in marked["evaluate.val.coco_metrics"]


def test_the_note_of_a_dataset_no_pipeline_makes_says_it_is_an_input() -> None:
    assert "No pipeline makes it" in not_produced_note([]) and "kedro run" not in not_produced_note([])
    both = not_produced_note(["evaluate", "evaluate_best_model"])
    assert (
        "run one of:\n  kedro run --pipeline evaluate\n  kedro run --pipeline evaluate_best_model\n" in both
    )


def test_build_sends_no_telemetry(viz: VizBuild) -> None:
    assert "heapanalytics" not in (viz.build / "index.html").read_text(encoding="utf-8")


def test_datasets_sit_in_known_layers_that_kedro_viz_can_order(viz: VizBuild) -> None:
    main = viz.main()
    data_nodes = [node for node in main["nodes"] if node["type"] == "data"]
    misplaced = {
        node["name"]: node["layer"]
        for node in data_nodes
        if node["layer"] not in KNOWN_LAYERS
        # In-memory hand-overs may stay out of the layers; anything stored needs one.
        and (node["layer"] is not None or not (node["dataset_type"] or "").endswith("MemoryDataset"))
    }
    assert misplaced == {}, f"give these datasets `metadata: kedro-viz: layer:` one of {KNOWN_LAYERS}"
    # kedro-viz draws no layer at all when data flows from a later layer back into an earlier one.
    used = {node["layer"] for node in data_nodes if node["layer"]}
    assert set(main["layers"]) == used, f"the layers {sorted(used)} form a cycle in the data flow"
    # Top to bottom, the page then reads as the way from COCO to a trained model and its metrics.
    assert main["layers"] == [layer for layer in KNOWN_LAYERS if layer in used]


def test_tables_metrics_and_plots_have_previews_and_coco_jsons_do_not(viz: VizBuild) -> None:
    ids = viz.data_node_ids()
    expected = set(PREVIEWED + NOT_PREVIEWED)
    assert expected <= ids.keys(), f"missing from the __default__ pipeline: {expected - ids.keys()}"
    preview_type = {name: viz.node_details(ids[name]).get("preview_type") for name in expected}
    # A dataset not produced yet is previewed with a note instead: its catalog entry says what it will be.
    not_produced = viz.not_produced().keys()
    assert {"validation_report", "dataset_box_sizes"}.isdisjoint(not_produced), "ingest made them"
    preview_type |= {name: viz.registry["preview_types"][name] for name in not_produced & set(PREVIEWED)}
    for name in TABLE_PREVIEWS:
        assert preview_type[name] == "TablePreview", name
    for name in METRIC_PREVIEWS:
        assert preview_type[name] is not None, f"{name} has no preview"
    for name in PLOT_PREVIEWS:
        assert preview_type[name] == "ImagePreview", name
    for name in NOT_PREVIEWED:
        assert preview_type[name] is None, f"{name} is previewed: set `metadata: kedro-viz: preview: false`"
    plots = [n["name"] for n in viz.main()["nodes"] if "MatplotlibDataset" in (n.get("dataset_type") or "")]
    shown = {
        name: viz.node_details(ids[name]).get("preview_type") for name in plots if name not in not_produced
    }
    assert shown and set(shown.values()) == {"ImagePreview"}, shown


def test_no_preview_is_big(viz: VizBuild) -> None:
    sizes = {path.name: path.stat().st_size for path in (viz.build / "api" / "nodes").iterdir()}
    assert max(sizes.values(), default=0) < MAX_PREVIEW_BYTES, sizes


def test_validation_report_preview_holds_the_report(viz: VizBuild) -> None:
    assert "ingest" in viz.registry["pipelines"], "no ingest pipeline is registered"
    assert viz.ingest.returncode == 0, viz.ingest.stderr[-4000:]
    preview = viz.node_details(viz.data_node_ids()["validation_report"])["preview"]
    assert preview is not None, "the validation report was not previewed"
    assert preview["columns"] == VALIDATION_REPORT_COLUMNS


@needs_chromium
def test_overview_renders_every_pipeline_node_offline(viz: VizBuild, overview: RenderedPage) -> None:
    ids = {node["full_name"]: node["id"] for node in viz.main()["nodes"] if node["type"] == "task"}
    shown = overview.elements.flowchart_nodes
    for node in viz.registry["nodes"]:
        if node["namespace"]:
            top_namespace = node["namespace"].split(".")[0]
            assert shown.get(top_namespace, {}).get("data-node-type") == "modularPipeline", node["name"]
        else:
            assert shown.get(ids[node["name"]], {}).get("data-node-fullname") == node["name"]
    _assert_stayed_on_machine(overview)


@needs_chromium
def test_expanded_view_renders_every_node_layer_and_tag(viz: VizBuild, expanded: RenderedPage) -> None:
    main = viz.main()
    shown = expanded.elements.flowchart_nodes
    missing = [
        node["full_name"] if node["type"] == "task" else node["name"]
        for node in main["nodes"]
        if node["type"] in {"task", "data"}
        and shown.get(node["id"], {}).get("data-node-type") != node["type"]
    ]
    assert missing == []
    assert set(main["layers"]) <= expanded.elements.layer_labels
    assert {tag["id"] for tag in main["tags"]} <= expanded.elements.filter_ids
    _assert_stayed_on_machine(expanded)


@needs_chromium
def test_validation_report_preview_renders(viz: VizBuild, site_url: str, tmp_path: Path) -> None:
    assert "ingest" in viz.registry["pipelines"] and viz.ingest.returncode == 0, "ingest did not run"
    node_id = viz.data_node_ids()["validation_report"]
    page = _render(site_url, f"?pid=__default__&sid={node_id}", tmp_path / "chromium")
    assert page.elements.preview_headers == VALIDATION_REPORT_COLUMNS
    _assert_stayed_on_machine(page)


@needs_chromium
def test_a_dataset_not_produced_yet_says_so_in_its_panel(
    viz: VizBuild, site_url: str, tmp_path: Path
) -> None:
    """Named by a pipeline with underscores, which a markdown renderer would turn into italics."""
    pipeline = "evaluate_initial_weights"
    name = f"{pipeline}.val.coco_metrics"
    assert name in viz.not_produced(), "the metrics were produced: nothing to show"
    node_id = {node["name"]: node["id"] for node in viz.pipeline(pipeline)["nodes"]}[name]
    page = _render(site_url, f"?pid={pipeline}&sid={node_id}", tmp_path / "chromium")
    shown = f"This dataset is not produced yet.\n\nTo make it, run:\n  kedro run --pipeline {pipeline}\n"
    assert f'<pre class="pipeline-text-renderer__content">{shown}' in page.dom
    _assert_stayed_on_machine(page)
