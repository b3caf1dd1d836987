"""The HTML report on a hand-made results dict: well-formed, self-contained, every string escaped, the numbers
drawn equal to the input, media round-trip through their data: URIs."""

from __future__ import annotations

import base64
import io
import math
import re
import wave
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from polymodal.report import Series, bar_chart, line_chart, render_report, write_report
from polymodal.report.plots import nice_ticks

EVIL = "<script>alert('x')</script> & \"quotes\""
ZH = "红色的大圆形在蓝色正方形的左边。"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Collects elements and text, and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.bar_labels: dict[tuple[str, str], list[str]] = {}
        self._label: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "text" and a.get("class") == "bar-label":
            self._label = (a["data-group"] or "", a["data-series"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))  # <line .../> in SVG: nothing to close

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "text":
            self._label = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._label is not None:
            self.bar_labels.setdefault(self._label, []).append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def parse(doc: str) -> Page:
    page = Page()
    page.feed(doc)
    page.close()
    assert not page.errors, page.errors[:5]
    assert page.stack == [], page.stack
    return page


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)


DIRECTIONS = {
    "text->image": {"R@1": 0.8125, "R@5": 0.96875, "R@10": 1.0, "median_rank": 1.0,
                    "attribute": {"R@1": 0.9, "R@5": 1.0, "R@10": 1.0}},
    "audio->image": {"R@1": 0.3333333333333333, "R@5": 0.7, "R@10": 0.85, "median_rank": 2.0,
                     "attribute": {"R@1": 0.5, "R@5": 0.75, "R@10": 0.9}},
    "image->text": {"R@1": 0.0, "R@5": 0.05, "R@10": 0.125, "median_rank": 40.0},
}


def results() -> dict:
    wave_f32 = np.sin(np.linspace(0, 200, 1600)).astype(np.float32) * 0.5
    hits = [{"id": i, "score": 0.9 - 0.1 * i, "sample_id": f"s{i}", "caption": cap, "image": _image(i),
             "match": i == 1} for i, cap in enumerate([EVIL, ZH, "a plain caption"])]
    return {
        "title": "report <b>title</b>",
        "subtitle": EVIL,
        "meta": {"data": EVIL, "minutes": 6.0},
        "steps": [{"name": "train", "status": "ran", "seconds": 12.5}, {"name": EVIL, "status": "reused", "seconds": 0}],
        "training": {"steps": [2, 4, 6, 8], "loss": [4.0, 3.0, float("nan"), 1.0], "val_steps": [8], "val_loss": [1.5],
                     "summary": {"steps": 8, EVIL: 1.25}},
        "retrieval": {"n_items": 300, "caption_duplicate_rate": 0.01, "directions": DIRECTIONS},
        "queries": [
            {"title": "Text " + EVIL, "kind": "text", "text": ZH + EVIL, "target": "s1", "hits": hits},
            {"title": "Speech query", "kind": "speech", "audio": (wave_f32, 16000), "note": EVIL, "hits": hits[:1]},
        ],
        "robustness": {"levels": [0.0, 0.5, 1.0], "models": {
            "late": {"clean": {"acc": 0.9}, "removed": {"audio": {"acc": 0.8}, "image": {"acc": 0.7}},
                     "noise": {"audio": {"acc": [0.9, 0.6, 0.3], "relative_robustness": 0.6}}},
            EVIL: {"clean": {"acc": 0.95}, "removed": {"audio": {"acc": 0.9}, "image": {"acc": 0.85}},
                   "noise": {"audio": {"acc": [0.95, 0.8, 0.5], "relative_robustness": 0.76,
                                       "effective_robustness": 0.15}}}}},
        "notes": [EVIL],
        "serve_command": "polymodal serve --model 'runs/<x>' --collection c",
    }


def test_report_is_valid_html_with_svg_and_no_live_markup():
    doc = render_report(results())
    page = parse(doc)
    assert page.all("script") == [], "a caption became a script element"
    assert "<script>" not in doc and "<b>title" not in doc
    assert doc.count("&lt;script&gt;") >= 8  # subtitle, meta, step, summary, query title/text/note, captions, notes
    assert len(page.all("svg")) >= 4  # loss curve, two R@K charts, robustness
    text = "".join(page.text)
    assert EVIL in text and ZH in text  # escaped in the source, back to the original string when parsed
    # self-contained: every src is a data: URI, nothing links out
    srcs = [a["src"] for t, a in page.tags if "src" in a]
    assert srcs and all((s or "").startswith("data:") for s in srcs)
    assert not [a for t, a in page.tags if t in ("link", "iframe") or (a.get("href") or "").startswith("http")]


def test_attributes_round_trip():
    page = parse(render_report(results()))
    alts = [a["alt"] for a in page.all("img")]
    assert alts[:3] == [EVIL, ZH, "a plain caption"]
    groups = {a["data-group"] for a in page.all("rect") if a.get("class") == "bar"}
    assert groups == set(DIRECTIONS)


def test_bars_carry_the_input_numbers():
    page = parse(render_report(results()))
    bars = [a for a in page.all("rect") if a.get("class") == "bar"]
    exact, attr = bars[:9], bars[9:]  # first chart: exact item, second: same labels
    assert len(exact) == 9 and len(attr) == 6  # image->text has no attribute numbers: no bars for it
    for a in exact:
        want = DIRECTIONS[a["data-group"]][a["data-series"]]
        assert float(a["data-value"]) == want
    for a in attr:
        assert float(a["data-value"]) == DIRECTIONS[a["data-group"]]["attribute"][a["data-series"]]
    for (group, series), labels in page.bar_labels.items():
        assert f"{DIRECTIONS[group][series]:.2f}" in labels or \
            f"{DIRECTIONS[group]['attribute'][series]:.2f}" in labels
    # bar heights are proportional to the values (y axis 0..1)
    heights = {(a["data-group"], a["data-series"]): float(a["height"]) for a in exact}
    full = heights[("text->image", "R@10")]
    assert heights[("text->image", "R@1")] == pytest.approx(0.8125 * full, abs=0.15)
    assert heights[("image->text", "R@1")] == 0.0


def _data(uri: str, kind: str) -> bytes:
    head, payload = uri.split(",", 1)
    assert head == f"data:{kind};base64"
    return base64.b64decode(payload)


def test_media_round_trip():
    res = results()
    page = parse(render_report(res))
    imgs = page.all("img")
    for a, hit in zip(imgs, res["queries"][0]["hits"], strict=False):
        got = np.asarray(Image.open(io.BytesIO(_data(a["src"], "image/png"))).convert("RGB"))
        np.testing.assert_array_equal(got, hit["image"])
    (audio,) = page.all("audio")
    with wave.open(io.BytesIO(_data(audio["src"], "audio/wav"))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    ref = [round(max(-1.0, min(1.0, float(x))) * 32767) for x in res["queries"][1]["audio"][0]]
    assert pcm.tolist() == ref


def test_matches_are_marked_and_optional_sections_absent(tmp_path):
    page = parse(render_report(results()))
    hits = [a for a in page.all("div") if a.get("class") in ("hit", "hit match")]
    assert [a["class"] for a in hits[:3]] == ["hit", "hit match", "hit"]
    minimal = write_report({"title": "only a title"}, tmp_path / "r" / "report.html")
    doc = minimal.read_text(encoding="utf-8")
    parse(doc)
    assert "<svg" not in doc and "only a title" in doc


def test_nice_ticks_cover_the_range():
    for lo, hi in [(0, 1), (0.013, 0.87), (1.2, 4.4), (0, 600), (-3, 7), (5, 5)]:
        ticks = nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi
        steps = np.diff(ticks)
        assert np.allclose(steps, steps[0]) and 2 <= len(ticks) <= 12
        mant = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert round(mant, 6) in (1, 2, 5, 10)


def test_line_chart_skips_missing_points_and_maps_monotonically():
    svg = line_chart([Series("loss", [1, 2, 3, 4], [4.0, None, float("inf"), 1.0])], title="t", x_label="x",
                     y_label="y")
    page = parse(svg)
    (poly,) = [a for a in page.all("polyline") if a.get("class") == "series"]
    pts = [tuple(map(float, p.split(","))) for p in (poly["points"] or "").split()]
    assert len(pts) == 2 and pts[0][0] < pts[1][0] and pts[0][1] < pts[1][1]  # higher loss drawn higher (smaller y)
    empty = line_chart([Series("none", [], [])], title="<empty>", x_label="x", y_label="y")
    assert "no data" in empty and "&lt;empty&gt;" in empty


def test_bar_chart_skips_missing_values():
    page = parse(bar_chart(["a", "b"], ["R@1", "R@5"], [[0.5, None], [float("nan"), 0.25]], title="t", y_label="r"))
    vals = [(a["data-group"], a["data-series"], float(a["data-value"])) for a in page.all("rect")
            if a.get("class") == "bar"]
    assert vals == [("a", "R@1", 0.5), ("b", "R@5", 0.25)]


# ------------------------------------------------------------------------------------------- readability

def _cells(doc: str) -> list[str]:
    parse(doc)
    return re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", doc)


def _significant(number: str) -> int:
    mantissa = number.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


def test_numbers_are_written_as_people_write_them():
    res = results()
    res["meta"] = {"minutes": 8.0, "steps": 8, "train seconds": 112.586, "samples/s": 1234.5678, "final loss": 0.050341,
                   "lr": 2.5e-05, "ratio": np.float32(0.5), "count": np.int64(3)}
    res["steps"] = [{"name": "train", "status": "ran", "seconds": 1121.37}, {"name": "data", "status": "reused",
                                                                           "seconds": 0.0, "took": 31.96}]
    cells = _cells(render_report(res))
    for want in ("8", "113", "1235", "0.0503", "2.5e-05", "0.5", "3", "1121", "0", "reused (took 32 s)"):
        assert want in cells, want
    assert not [c for c in cells if re.fullmatch(r"-?\d+\.\d*0", c)], "trailing zeros"  # 8.000, 0.0, 1121.40
    decimals = [c for c in cells if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", c)]
    assert decimals and not [c for c in decimals if _significant(c) > 3], "too many digits"  # 112.586, 0.81250
    # recall and accuracy keep three significant digits
    assert "0.812" in cells and "0.333" in cells


def test_a_single_point_is_a_marker_in_the_chart_and_the_legend():
    svg = line_chart([Series("train loss", [2, 4, 6, 8], [4.0, 3.0, 2.0, 1.0]),
                      Series("validation loss", [8], [1.5], dashed=True, markers=True)],
                     title="t", x_label="step", y_label="loss")
    page = parse(svg)
    swatches = {a["data-name"]: t for t, a in page.tags if a.get("class") == "legend-swatch"}
    assert swatches == {"train loss": "line", "validation loss": "circle"}
    lines = [a["data-name"] for a in page.all("polyline") if a.get("class") == "series"]
    assert lines == ["train loss"]  # no one-point "line"
    assert len([a for a in page.all("circle") if a.get("class") == "point"]) == 1


def _robustness(image_curve: list[float], image_removed: float) -> dict:
    return {"levels": [0.0, 0.5, 1.0], "models": {
        "late": {"clean": {"acc": 1.0}, "removed": {"audio": {"acc": 0.6}, "image": {"acc": image_removed}},
                 "noise": {"audio": {"acc": [1.0, 0.7, 0.4], "relative_robustness": 0.7},
                           "image": {"acc": image_curve, "relative_robustness": 1.0}}},
        "attention": {"clean": {"acc": 1.0}, "removed": {"audio": {"acc": 0.5}, "image": {"acc": image_removed}},
                      "noise": {"audio": {"acc": [1.0, 0.5, 0.3], "relative_robustness": 0.575,
                                          "effective_robustness": -0.3},
                                "image": {"acc": image_curve, "relative_robustness": 1.0,
                                          "effective_robustness": 0.0}}}}}


def test_a_flat_noise_curve_is_explained():
    doc = render_report({"title": "t", "robustness": _robustness([1.0, 1.0, 0.995], image_removed=1.0)})
    page = parse(doc)
    notes = [a for a in page.all("p") if a.get("class") == "muted flat-note"]
    assert [a["data-sweep"] for a in notes] == ["image"]  # the audio curves fall: nothing to explain
    text = " ".join("".join(page.text).split())
    assert "Accuracy vs image noise is flat" in text
    assert "with the image removed they still score 1" in text  # they do not need it: audio carries the label
    partial = render_report({"title": "t", "robustness": _robustness([1.0, 1.0, 1.0], image_removed=0.4)})
    assert "removing the image costs accuracy" in " ".join("".join(parse(partial).text).split())


def test_effective_robustness_says_what_its_number_means():
    text = " ".join("".join(parse(render_report({"title": "t", "robustness": _robustness(
        [1.0, 0.9, 0.8], 0.9)})).text).split())
    assert "summed over the 3 noise levels" in text and "0 for late fusion itself" in text
    assert "on the accuracy scale (0-1)" in text  # relative robustness
    assert "eff. robustness (sum over 3 levels)" in text  # the table header
