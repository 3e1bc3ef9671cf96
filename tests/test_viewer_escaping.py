"""`aifeedback view` with hostile text, checked without a browser.

A real run (verdicts imported with `import-labels`, so no model runs) whose pair ids,
prompts, responses, judge name, exclusion rows and run folder name hold markup that
would break out of the page: a closing ``</script>``, a ``</SCRIPT >`` variant, ``<!--``,
an ``<img onerror>``, quotes and ampersands, entity text, and U+2028/U+2029. The page
is parsed with Python's html.parser and read the way a browser reads the two places the
run's text goes: the ``<title>`` (escaped text) and the JSON data block in
``<script type="application/json">``, which the page reads with
``JSON.parse(element.textContent)`` (no HTML unescaping: the text of a script element
is raw). tests/test_viewer.py checks the same page in Chromium.
"""

from __future__ import annotations

import json
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

SCRIPT = "</script><script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
HOSTILE = [
    SCRIPT,
    IMG,
    "\"'&<>",
    "line\u2028separator\u2029paragraph",
    "</SCRIPT ><script>alert(2)</script >",
    "<!--<script>",
    "&lt;b&gt; &amp;amp; &#60;",  # entity text must stay literal
]
JUDGE = f"judge {IMG}"
RUN_NAME = f"run {IMG} &amp; \"q' <!--"  # the folder name is the page's title and data["run"]


class Page(HTMLParser):
    """Every start tag with its attributes, each script element's raw text, and the title's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.title = ""
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag in ("script", "title"):
            self._open = tag
            if tag == "script":
                self.scripts.append((dict(attrs), ""))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open == "script":
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif self._open == "title":
            self.title += data


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


def data_block(html: str) -> str:
    """The data script's text as a browser cuts it: up to the first ``</script`` followed by space, / or > (any case)."""
    start = re.search(r'<script type="application/json" id="data">', html)
    assert start, "no data block in the page"
    end = re.compile(r"</script[\t\n\f\r />]", re.I).search(html, start.end())
    return html[start.end() : end.start()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from flows.import_labels import run_import_labels

    base = tmp_path_factory.mktemp("escaping")
    rows = [{"pair_id": f"x{i} {s}", "prompt": f"Q {s}", "response_a": f"A {s}", "response_b": f"B {s}"} for i, s in enumerate(HOSTILE)]
    rows += [
        {"pair_id": f"noverdict {IMG}", "prompt": "q", "response_a": "a", "response_b": "b"},  # excluded: no_verdict, its id in the detail
        {"pair_id": "same", "prompt": "q", "response_a": SCRIPT, "response_b": SCRIPT},  # excluded: identical_responses, raw = SCRIPT
        {"pair_id": "badprompt", "prompt": [{"role": SCRIPT}], "response_a": "a", "response_b": "b"},  # excluded: bad_messages, raw = the prompt
    ]
    pairs = base / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    verdicts = base / "verdicts.jsonl"
    verdicts.write_text("".join(json.dumps({"pair_id": r["pair_id"], "label": "AB"[i % 2]}, ensure_ascii=False) + "\n" for i, r in enumerate(rows) if not r["pair_id"].startswith("noverdict")), encoding="utf-8")
    root = base / RUN_NAME
    s = run_import_labels(run_dir=str(root), verdicts=str(verdicts), judge=JUDGE, overrides={"input": str(pairs)})
    assert s["complete"] and s["n_out"] == len(HOSTILE) and s["n_excluded"] == 3
    return root


def test_hostile_run_text_injects_nothing_and_round_trips(run):
    from labelers.viewer import collect, render, write_viewer

    page_path, data = write_viewer(run)
    html = page_path.read_text(encoding="utf-8")
    page, own = parse(html), parse(render({"run": "plain"}))  # the viewer's own elements, with harmless data

    # no element or attribute was injected: the same tags, with the same attributes, as the plain page
    assert page.tags == own.tags
    assert [t for t, _ in page.tags].count("script") == 2 and "img" not in [t for t, _ in page.tags]
    assert not any(name.startswith("on") for _, attrs in page.tags for name, _ in attrs)

    # the title shows the run's folder name as text
    assert page.title == f"aifeedback · {RUN_NAME}"
    title_raw = re.search(r"<title>(.*?)</title", html, re.S | re.I).group(1)  # RCDATA, as a browser reads it
    assert unescape(title_raw) == f"aifeedback · {RUN_NAME}" and "<" not in title_raw

    # the data block: what a browser's script element holds, and what JSON.parse(textContent) gives back
    block = data_block(html)
    try:
        parsed = json.loads(block)
    except ValueError as exc:
        raise AssertionError(f"a browser ends the data block early, inside the JSON ({exc}): ...{block[-120:]!r}") from None
    assert parsed == data == collect(run)
    assert [text for attrs, text in page.scripts if attrs.get("id") == "data"] == [block]
    for bad in ("<!--", "<script", "</script"):  # the HTML spec's restrictions for the contents of script elements
        assert bad not in block.lower(), f"{bad!r} in the data block: a browser may run the rest of the page differently"

    # known answers: every hostile string back, exactly, in its place
    pairs = {p["id"]: p for p in parsed["pairs"]}
    assert sorted(pairs) == sorted(f"x{i} {s}" for i, s in enumerate(HOSTILE))
    for i, s in enumerate(HOSTILE):
        p = pairs[f"x{i} {s}"]
        assert (p["a"], p["b"], p["ctx"]) == (f"A {s}", f"B {s}", [["user", f"Q {s}"]])
    assert parsed["run"] == RUN_NAME and parsed["about"]["labeler"] == [JUDGE]
    excluded = {e["id"]: e for e in parsed["excluded"]}
    assert sorted(excluded) == sorted([f"noverdict {IMG}", "same", "badprompt"])
    assert f"noverdict {IMG}" in excluded[f"noverdict {IMG}"]["detail"]
    assert excluded["same"]["raw"] == SCRIPT
    assert excluded["badprompt"]["raw"] == str([{"role": SCRIPT}])
