import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from report_views import read_html, read_markdown

from kic.evaluation.gate import decide
from kic.evaluation.metrics import evaluate_predictions
from kic.evaluation.report import render_html, render_markdown

EVIL = "<script>x</script>"
ESCAPED_EVIL = "&lt;script&gt;x&lt;/script&gt;"
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"")


def _encoded(color, image_format):
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buffer, image_format)
    return buffer.getvalue()


def _binary_result(names=("cat", EVIL)):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=120)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    return evaluate_predictions(labels, scores, list(names), binary_mode=True)


def _multiclass_result(num_classes, n=400, names=None):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, num_classes, size=n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 2.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = names or [f"class_{i}" for i in range(num_classes)]
    return evaluate_predictions(labels, proba, names, binary_mode=False)


MISCLASSIFIED = [
    {"image": _encoded((255, 0, 0), "JPEG"), "true": "cat", "predicted": EVIL, "confidence": 0.61},
    {"image": _encoded((0, 255, 0), "PNG"), "true": EVIL, "predicted": "cat", "confidence": 0.97},
    {"image": _encoded((0, 0, 255), "JPEG"), "true": "cat", "predicted": EVIL, "confidence": 0.75},
]
HISTORY = {
    "loss": [0.9, 0.6, 0.5],
    "accuracy": [0.6, 0.7, 0.8],
    "val_loss": [0.8, 0.7, 0.65],
    "val_accuracy": [0.62, 0.68, 0.7],
}


def _decoded_images(page):
    images = []
    for src in IMG_SRC.findall(page):
        header, payload = src.split(",", 1)
        assert header.startswith("data:image/") and header.endswith(";base64")
        images.append((header, Image.open(io.BytesIO(base64.b64decode(payload)))))
    return images


def test_html_is_self_contained_and_escaped():
    result = _binary_result()
    blessing = decide(result.scalars, metric="auc", minimum=0.99)
    page = render_html(result, title=f"Report for {EVIL}", blessing=blessing, history=HISTORY,
                       misclassified=MISCLASSIFIED)

    # Nothing is fetched from anywhere: no URLs, no links, no imports, no script.
    assert "http://" not in page and "https://" not in page
    assert "href=" not in page and "@import" not in page and "url(" not in page
    assert "<script" not in page and "<link" not in page
    sources = IMG_SRC.findall(page)
    assert sources and all(src.startswith("data:") for src in sources)
    assert len(re.findall(r"<img\b", page)) == len(sources)

    # The untrusted class name appears only escaped: title, tables, captions.
    assert ESCAPED_EVIL in page
    assert page.count(ESCAPED_EVIL) >= 1 + 2 + len(MISCLASSIFIED)


def test_html_has_every_plot_and_one_image_per_misclassified_example():
    result = _binary_result()
    page = render_html(result, title="t", history=HISTORY, misclassified=MISCLASSIFIED)
    images = _decoded_images(page)
    plots = [image for header, image in images if header == "data:image/png;base64" and image.width > 100]
    examples = [image for _, image in images if image.size == (24, 16)]
    assert len(examples) == len(MISCLASSIFIED)
    assert len(plots) == 3  # confusion matrix, ROC + PR, training curves
    assert len(images) == len(MISCLASSIFIED) + 3
    assert {header for header, _ in images} >= {"data:image/jpeg;base64", "data:image/png;base64"}

    # Without the optional inputs, only the confusion matrix and the curves remain.
    assert len(_decoded_images(render_html(result, title="t"))) == 2


def test_misclassified_are_sorted_most_confident_first():
    page = render_html(_binary_result(), title="t", misclassified=MISCLASSIFIED)
    confidences = [float(value) for value in re.findall(r"confidence: ([0-9.]+)%", page)]
    assert confidences == [97.0, 75.0, 61.0]


def test_unrecognised_image_bytes_get_a_placeholder_not_a_broken_image():
    item = {"image": b"not an image", "true": "a", "predicted": "b", "confidence": 0.9}
    page = render_html(_binary_result(), title="t", misclassified=[item])
    assert "unsupported image format" in page
    assert len(_decoded_images(page)) == 2


def test_per_class_table_lists_worst_f1_first():
    result = _multiclass_result(6)
    page = render_html(result, title="t")
    _, per_class, _ = read_html(page).tables  # headline, per class, all metrics
    order = [row[0] for row in per_class[1:]]
    expected = [row["class"] for row in sorted(result.per_class, key=lambda row: row["f1"])]
    assert order == expected
    assert "top_5_accuracy" in page  # six classes > k = 5


def test_multiclass_has_no_curves_and_many_classes_are_capped():
    page = render_html(_multiclass_result(4), title="t")
    assert len(_decoded_images(page)) == 1
    assert "ROC" not in page

    names = [f"c{i}$" for i in range(60)]  # "$" would break matplotlib mathtext if not escaped
    page = render_html(_multiclass_result(60, n=600, names=names), title="many")
    assert "Showing the 50 of 60 classes" in page
    assert len(_decoded_images(page)) == 1


def test_verdict_and_reasons_in_html():
    result = _multiclass_result(4)
    fail = decide(result.scalars, metric="accuracy", minimum=0.999)
    page = render_html(result, title="t", blessing=fail)
    assert "NOT BLESSED" in page and {"class": "box failed"} in read_html(page).tags("div")
    assert fail.reasons[0] in page

    passing = decide(result.scalars, metric="accuracy", minimum=0.1)
    page = render_html(result, title="t", blessing=passing)
    assert "Quality gate: BLESSED" in page


def test_markdown_has_headline_accuracy_verdict_and_escaped_names():
    result = _binary_result()
    blessing = decide(result.scalars, metric="accuracy", minimum=0.1)
    text = render_markdown(result, blessing=blessing)
    assert f"| accuracy | {result.scalars['accuracy']:.4f} |" in text
    assert "**Verdict: BLESSED**" in text and "Verdict: BLESSED (gate on accuracy)" in read_markdown(text).text
    assert "<script>" not in text and ESCAPED_EVIL in text
    assert "auc" in text and "Per-class" in text

    failing = render_markdown(result, blessing=decide(result.scalars, metric="accuracy", minimum=0.999))
    assert "**Verdict: NOT BLESSED**" in failing
    assert "Verdict" not in render_markdown(result)


def test_markdown_caps_the_class_table():
    text = render_markdown(_multiclass_result(30, n=300))
    assert "Showing the 20 worst of 30 classes." in text
    assert len(re.findall(r"^\| class\\_\d+ ", text, flags=re.MULTILINE)) == 20


@pytest.mark.parametrize("name", ["a|b", "x`y", "under_score*"])
def test_markdown_table_cells_survive_special_characters(name):
    result = _binary_result(names=("plain", name))
    _, per_class = read_markdown(render_markdown(result)).tables  # headline, per class
    # The name is one cell's text, as written: it did not split the row into extra cells.
    assert sorted(row[0] for row in per_class[1:]) == sorted(["plain", name])
    assert {len(row) for row in per_class} == {5}


def test_rendering_from_several_threads_gives_the_same_page():
    result = _binary_result()
    sequential = render_html(result, title="t")
    with ThreadPoolExecutor(max_workers=2) as pool:
        pages = list(pool.map(lambda _: render_html(result, title="t"), range(2)))
    assert all(page == sequential for page in pages)
