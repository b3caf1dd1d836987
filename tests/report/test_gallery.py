"""The gallery of generated pictures: well-formed HTML, every string escaped, the pictures round-trip through their
PNG data URIs in order, scores and captions shown, and the report's optional "Generated images" section."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from polymodal.errors import InvalidInput
from polymodal.report import render_report
from polymodal.report.gallery import GalleryItem, gallery_html

EVIL = "<script>alert('x')</script> & \"quotes\""
ZH = "一个蓝色的圆在红色星星的下面"
VOID = {"img", "meta", "br"}


class Page(HTMLParser):
    """Elements, text, and whether every non-void element is closed in order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def images(self) -> list[np.ndarray]:
        out = []
        for tag, a in self.tags:
            if tag == "img":
                src = a["src"] or ""
                assert src.startswith("data:image/png;base64,")
                with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
                    out.append(np.asarray(im))
        return out


def pictures(k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, 16, 16, 3), dtype=np.uint8)


def test_cards_pictures_and_escaping():
    several, four = pictures(2, 0), pictures(4, 1)
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    items = [GalleryItem(EVIL, list(several), lang="en", scores={"clip": 0.31234, "attr<acc>": 1.0},
                         caption=f"caption {EVIL}"),
             GalleryItem(ZH, four, lang="zh"),
             GalleryItem("gray", gray)]
    html = gallery_html(items)
    page = Page(html)
    assert not page.errors and not page.stack
    assert "<script>" not in html and "&lt;script&gt;" in html
    got = page.images()
    assert len(got) == 2 + 4 + 1
    for a, b in zip(got, [*several, *four, gray], strict=True):
        np.testing.assert_array_equal(a, b)
    text = "".join(page.text)
    assert EVIL in text and ZH in text and f"caption {EVIL}" in text   # unescaped back to the same text
    assert "clip 0.312" in text and "attr<acc> 1" in text
    figures = [a for t, a in page.tags if t == "figure"]
    assert [f.get("lang") for f in figures] == ["en", "zh", None]
    assert sum(1 for t, a in page.tags if t == "div" and a.get("class") == "gallery") == 1
    assert all(a.get("alt") == EVIL for t, a in page.tags[:10] if t == "img")


def test_a_hostile_lang_never_reaches_an_attribute():
    page = Page(gallery_html([GalleryItem("p", pictures(1, 2)[0], lang="en' onload='x")]))
    assert [a.get("lang") for t, a in page.tags if t == "figure"] == [None]
    assert not any("onload" in k for _, a in page.tags for k in a)


def test_mappings_empty_and_bad_pictures():
    img = pictures(1, 3)[0]
    assert gallery_html([{"prompt": "p", "image": img, "scores": {"fid": 12}}]) == \
        gallery_html([GalleryItem("p", img, scores={"fid": 12})])
    assert "No generated images" in gallery_html([])
    with pytest.raises(InvalidInput, match="uint8") as e:
        GalleryItem("p", img.astype(np.float32))
    assert e.value.field == "image"
    with pytest.raises(InvalidInput, match="at least one"):
        GalleryItem("p", [])
    with pytest.raises(InvalidInput, match="prompt, image"):
        GalleryItem.of({"prompt": "p", "picture": img})


def test_report_section_is_optional():
    items = [GalleryItem("a red star", pictures(2, 4), lang="en")]
    with_it = render_report({"title": "t", "generated_images": items})
    page = Page(with_it)
    assert not page.errors and "Generated images" in "".join(page.text) and len(page.images()) == 2
    without = render_report({"title": "t"})
    assert "Generated images" not in without and "gallery" not in without
