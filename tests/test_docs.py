"""The docs site builds in strict mode, documents every public name, and the README's links land.

mkdocstrings renders what it finds and says nothing about what it does not, so the checks it leaves out
(a public name without a docstring, or missing from the API reference) are made here on the same griffe
view of the package that the site is built from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import griffe  # the docs extra, part of dev
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE_COMMANDS = [
    "make demo   # set up .venv, install, prune + train a network on real data offline (under a minute)",
    "make test   # set up .venv, install, run the whole test suite",
]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
           "--site-dir", str(site)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300), site


@pytest.fixture(scope="module")
def site(build) -> Path:
    proc, site = build
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}")
    return site


def _html_ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))


def _page(site: Path, doc: str) -> Path:
    """The built page of docs/<doc> (MkDocs' directory URLs: x.md -> x/index.html, a/index.md -> a/index.html)."""
    stem = doc[: -len(".md")]
    return site / (stem[: -len("index")] if stem == "index" or stem.endswith("/index") else stem + "/") / "index.html"


def _public_api() -> tuple[object, list[str]]:
    """The package as the site sees it, and the dotted path of every public name."""
    import lightning_synflow
    import lightning_synflow.analysis
    import lightning_synflow.models

    extensions = griffe.load_extensions("griffe_inherited_docstrings", "griffe_sphinx")  # as in mkdocs.yml
    package = griffe.load("lightning_synflow", search_paths=[str(ROOT)], extensions=extensions)
    paths = [f"lightning_synflow.{n}" for n in lightning_synflow.__all__]
    paths += [f"lightning_synflow.analysis.{n}" for n in lightning_synflow.analysis.__all__]
    paths += [f"lightning_synflow.models.{n}" for n in lightning_synflow.models.__all__]
    figures = package["analysis.figures"]
    paths += [f"lightning_synflow.analysis.figures.{n}" for n, f in figures.functions.items() if not n.startswith("_")]
    paths.append("lightning_synflow.distributions.LayerDensities")  # subclassed by users (docs/scorers.md)
    return package, paths


def _resolve(package, path: str):
    """The object a public name stands for (``analysis.conservation`` is a module and, imported over it, a
    function of the same name: the function)."""
    obj = package[path.removeprefix("lightning_synflow.")]
    obj = obj.final_target if obj.is_alias else obj
    return obj[obj.name] if obj.is_module and obj.name in obj.members and path.count(".") > 1 else obj


def test_the_site_builds_in_strict_mode(build):
    proc, site = build
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    for doc in ("index.md", "callback.md", "structured.md", "sharded.md", "api/index.md"):
        assert _page(site, doc).is_file(), doc
    for page in (site / "api").rglob("index.html"):  # docs/sphinx_roles.py turned every role into a link
        assert not re.search(r":(class|func|meth|mod|data|attr):<code>", page.read_text(encoding="utf-8")), page


def test_every_public_name_and_method_has_a_docstring():
    """A name without a docstring is not rendered at all (show_if_no_docstring is off): it must have one."""
    from lightning.pytorch import Callback

    lightning_hooks = {n for n in dir(Callback) if not n.startswith("_")}  # documented by Lightning
    package, paths = _public_api()
    missing = []
    for path in paths:
        obj = _resolve(package, path)
        if not (obj.docstring and obj.docstring.value.strip()):
            missing.append(path)
        if not obj.is_class:
            continue
        for name, member in obj.members.items():
            if name.startswith("_") or member.is_alias or name in lightning_hooks:
                continue
            if (member.is_function or "property" in member.labels) and not (
                member.docstring and member.docstring.value.strip()
            ):
                missing.append(f"{path}.{name}")
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_name_is_in_the_api_reference(site):
    package, paths = _public_api()
    ids = set().union(*(_html_ids(p) for p in (site / "api").rglob("index.html")))
    missing = [p for p in paths if p not in ids and _resolve(package, p).path not in ids]
    assert not missing, f"add them to a page under docs/api/: {missing}"


def test_the_readme_is_a_front_page_whose_first_commands_are_make_demo_and_make_test():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    first_block = re.search(r"```\w*\n(.*?)```", text, re.S).group(1)
    assert first_block.splitlines() == MAKE_COMMANDS


def test_the_readme_links_land_on_github_and_in_the_site(site):
    """Relative links resolve from the repository root (as GitHub reads them); a #anchor into docs/*.md is a
    heading id of the built page, whose ids follow GitHub's (the toc slugify in mkdocs.yml)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    broken = []
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        if not target or not (ROOT / target).exists():
            broken.append(link)
        elif anchor:
            if not (target.startswith("docs/") and target.endswith(".md")):
                broken.append(link)
            elif anchor not in _html_ids(_page(site, target.removeprefix("docs/"))):
                broken.append(link)
    assert not broken, f"README links that do not land: {broken}"


def _section(text: str, start: str, end: str) -> str:
    body = text[text.index(start) : text.index(end, text.index(start))]
    body = re.sub(r"\]\(docs/", "](", body)  # README -> docs/ relative links
    body = re.sub(r"\[([^\]]+)\]\((?!https?://)[^)]*\.\w+\)", lambda m: m.group(1) if "examples/" in m.group(0) else m.group(0), body)
    return body.strip()


def test_the_site_repeats_the_readme_word_for_word():
    """The site's home and getting-started page repeat the README's "why" and quick start: they must not drift."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    start = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert _section(readme, "Prune a neural network", "## Quick start") == _section(index, "Prune a neural network", "## Where to go")
    assert _section(readme, "Python:\n", "## Scorers") == _section(start, "Python:\n", "Next:")
