"""The documentation site: `mkdocs build --strict` passes (CI runs it here, through pytest), every page is in
the navigation and linked from the README, the README stays a front page, and the built site, served on
127.0.0.1, renders in headless Chromium without asking any other host for a font or a script."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from browser import BrowsedPage, browse, needs_chromium, serve

from frcnn_pipeline.config import all_schema_keys
from frcnn_pipeline.framework.parameter_docs import REFERENCE

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MKDOCS_YML = PROJECT_ROOT / "mkdocs.yml"
README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
README_MAX_LINES = 200
# The demo's command; the test command is the one .ci/run runs, its last line.
DEMO_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && kedro run"
CI_RUN = PROJECT_ROOT / ".ci" / "run"
BUILD_TIMEOUT_S = 300
VIRTUAL_TIME_BUDGET_MS = 5_000
# Where the home page (docs/index.md) stops repeating the README: the README lists the pages there, the site's
# navigation does it on the site.
README_PAGES_HEADING, HOME_PAGES_HEADING = "## Documentation", "## This site"


def nav_pages(nav: list) -> list[str]:
    pages = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))


class SiteBuild:
    def __init__(self, site: Path):
        self.site = site
        self.process = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )


@pytest.fixture(scope="module")
def build(module_tmp) -> SiteBuild:
    return SiteBuild(module_tmp("mkdocs") / "site")


class _Resources(HTMLParser):
    """What a page loads (scripts, stylesheets, icons, images, frames), as opposed to the links it shows."""

    def __init__(self):
        super().__init__()
        self.loaded: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        url = attributes.get("href") if tag == "link" else attributes.get("src")
        if url and tag in {"script", "link", "img", "iframe", "source", "video", "audio", "embed"}:
            self.loaded.append(url)


# ------------------------------------------------------------------------------------------------ the build


def test_the_site_builds_strictly(build: SiteBuild) -> None:
    output = build.process.stdout + build.process.stderr
    assert build.process.returncode == 0, output[-4000:]
    assert not re.search(r"^(WARNING|ERROR)\s+-", output, re.MULTILINE), output[-4000:]
    assert (build.site / "index.html").is_file()


def test_every_page_is_in_the_navigation(config: dict) -> None:
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    listed = nav_pages(config["nav"])
    assert sorted(listed) == sorted(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    assert set(listed) == pages, (
        f"add to mkdocs.yml's nav: {pages - set(listed)}; missing: {set(listed) - pages}"
    )


def test_the_site_needs_no_other_host(config: dict, build: SiteBuild) -> None:
    assert config["theme"].get("font") is False, "theme.font: false, or the pages load Google Fonts"
    assert {"search", "offline"} <= {next(iter(p)) if isinstance(p, dict) else p for p in config["plugins"]}
    outside = {}
    for page in build.site.rglob("*.html"):
        resources = _Resources()
        resources.feed(page.read_text(encoding="utf-8"))
        hosts = {urlsplit(url).hostname for url in resources.loaded} - {None, "127.0.0.1"}
        if hosts:
            outside[page.name] = hosts
    assert outside == {}, f"pages load from other hosts: {outside}"


def test_the_parameters_page_is_the_generated_one(build: SiteBuild) -> None:
    """The site shows docs/parameters.md, which the generator writes (test_parameter_docs: it is current)."""
    assert REFERENCE.parent == DOCS
    page = (build.site / REFERENCE.with_suffix(".html").name).read_text(encoding="utf-8")
    missing = [key for key in all_schema_keys() if f"<code>{key}</code>" not in page]
    assert missing == [], f"keys of the schema not on the parameters page: {missing[:5]}"


# ----------------------------------------------------------------------------------------- the front page


def test_the_readme_is_a_front_page_that_links_every_page(config: dict) -> None:
    readme = README.read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES, "move the new section into a page of docs/"
    test_command = CI_RUN.read_text(encoding="utf-8").strip().splitlines()[-1]
    for command in (DEMO_COMMAND, test_command):
        assert f"```bash\n{command}\n```" in readme, f"the README's quick start lacks: {command}"
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", readme))
    unlinked = set(nav_pages(config["nav"])) - {"index.md"} - linked
    assert unlinked == set(), f"link these pages from the README's Documentation table: {unlinked}"
    assert all((DOCS / page).is_file() for page in linked), linked


def test_the_home_page_is_the_readme_with_site_links() -> None:
    readme = README.read_text(encoding="utf-8").split(README_PAGES_HEADING)[0]
    home = (DOCS / "index.md").read_text(encoding="utf-8").split(HOME_PAGES_HEADING)[0]
    assert home == readme.replace("](docs/", "]("), "docs/index.md repeats the README up to its page list"


# -------------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def site_url(build: SiteBuild) -> Iterator[str]:
    assert build.process.returncode == 0, "the site did not build"
    with serve(build.site) as url:
        yield url


@needs_chromium
@pytest.mark.parametrize(
    ("page", "heading"), [("index.html", "frcnn_pipeline"), ("scaling-out.html", "Several machines")]
)
def test_pages_render_offline(site_url: str, page: str, heading: str, tmp_path: Path) -> None:
    dom, net_log = browse(
        f"{site_url}/{page}", tmp_path, window_size="1280,2000", virtual_time_budget_ms=VIRTUAL_TIME_BUDGET_MS
    )
    rendered = BrowsedPage(dom, net_log, site_url)
    assert re.search(rf"<h1[^>]*>{re.escape(heading)}", dom), dom[-2000:]
    assert "md-nav__link" in dom and "Getting started" in dom and "When something goes wrong" in dom
    rendered.assert_stayed_on_machine()
