"""The dashboard's static files, checked without a browser: local assets only, all present,
nothing fetched from another host, and nothing a strict Content-Security-Policy would block."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
# An XML namespace names a vocabulary; nothing fetches it. Every other URL is a fetch.
NAMESPACES = {"http://www.w3.org/2000/svg"}
URL_RE = re.compile(r"\b(?:https?|wss?|ftp)://[^\s\"'`)<>]*", re.IGNORECASE)
JS_IMPORT_RE = re.compile(
    r"""(?:\bimport\s[^;]*?\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])([^'"]+)\1""")
CSS_URL_RE = re.compile(r"""url\(\s*(['"]?)([^'")]+)\1\s*\)|@import\s+(['"])([^'"]+)\3""")


class _Refs(HTMLParser):
    """Collects what index.html loads, and anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            value = a.get(name)
            if value is not None and not (tag == "a" and value.startswith("#")):
                self.refs.append((tag, value))
        if tag == "script" and a.get("src") is None:
            self._in_script = True
        if "style" in a:
            self.inline.append(f"style attribute on <{tag}>")
        self.inline.extend(f"{name} handler on <{tag}>" for name in a if name.startswith("on"))
        if tag == "style":
            self.inline.append("<style> element")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline <script>")


def _index() -> _Refs:
    parser = _Refs()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parser


def _local(ref: str) -> Path:
    """The static file a same-origin reference names; fails for anything else."""
    assert not re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.IGNORECASE), f"{ref!r} has a scheme"
    assert not ref.startswith("//"), f"{ref!r} is protocol-relative (another host)"
    path = ref.split("?", 1)[0].split("#", 1)[0].removeprefix("./").removeprefix("/")
    assert path, f"{ref!r} names no file"
    assert "/" not in path, f"{ref!r}: assets live directly in gateway/static (package-data)"
    return STATIC / path


def test_index_references_only_local_files_that_exist() -> None:
    """Every src/href of index.html is a same-origin file present in gateway/static."""
    refs = _index().refs
    assert refs, "index.html references nothing"
    for tag, ref in refs:
        assert _local(ref).is_file(), f"<{tag}> references {ref!r}, which is not there"


def test_app_is_a_module_script() -> None:
    """app.js loads as an ES module (its imports need it; so does the gateway's MIME type)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert re.search(r'<script\s+type="module"\s+src="app\.js"', html)


@pytest.mark.parametrize("script", sorted(p.name for p in STATIC.glob("*.js")))
def test_js_imports_are_local_and_exist(script: str) -> None:
    """Each module imports only sibling files that exist, by relative path."""
    text = (STATIC / script).read_text(encoding="utf-8")
    for _quote, ref in JS_IMPORT_RE.findall(text):
        assert ref.startswith("./"), f"{script} imports {ref!r}: only ./relative modules"
        assert _local(ref).is_file(), f"{script} imports {ref!r}, which is not there"


def test_css_loads_nothing_from_elsewhere() -> None:
    """style.css pulls in no fonts, images or stylesheets from anywhere but here."""
    for path in STATIC.glob("*.css"):
        for match in CSS_URL_RE.finditer(path.read_text(encoding="utf-8")):
            ref = match.group(2) or match.group(4)
            if ref.startswith("data:"):
                continue
            assert _local(ref).is_file(), f"{path.name} loads {ref!r}"


def test_every_asset_is_used() -> None:
    """No dead files: each static file is reached from index.html, a module or the CSS."""
    reached = {"index.html"}
    reached.update(_local(ref).name for _tag, ref in _index().refs)
    for script in STATIC.glob("*.js"):
        reached.update(_local(ref).name for _q, ref in
                       JS_IMPORT_RE.findall(script.read_text(encoding="utf-8")))
    present = {p.name for p in STATIC.iterdir() if p.is_file()}
    assert present - reached == set()


def test_no_urls_to_other_hosts() -> None:
    """No file names an http(s)/ws(s) URL: the dashboard works on an air-gapped network."""
    found = []
    for path in STATIC.iterdir():
        if path.suffix not in {".html", ".js", ".css", ".svg"}:
            continue
        for url in URL_RE.findall(path.read_text(encoding="utf-8")):
            if url not in NAMESPACES:
                found.append(f"{path.name}: {url}")
    assert found == []


def test_no_inline_code_or_eval() -> None:
    """index.html has no inline script, style or handlers, and no module uses eval, so the
    gateway can serve it under `script-src 'self'; style-src 'self'`."""
    assert _index().inline == []
    for script in STATIC.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"\beval\s*\(|\bnew\s+Function\s*\(|\.innerHTML\s*=", text), (
            f"{script.name} uses eval, new Function or innerHTML")


def test_static_folder_is_flat() -> None:
    """Everything sits directly in gateway/static, which package-data ``static/*`` ships."""
    assert [p.name for p in STATIC.iterdir() if p.is_dir()] == []
