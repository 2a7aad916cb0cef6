"""Names are data, never markup: a hostile class name, file name, hyperparameter
value, model URI or error message goes through each real report writer (data,
evaluation, tuning) and comes out as text in both formats.

The Markdown is read as the KFP UI's viewer reads it (raw HTML passed through,
see report_views), the HTML as a browser does; each must build only the
elements the report itself writes, keep every table's columns, and still show
the name as written.
"""

import numpy as np
import pytest
from image_fixtures import noise_jpeg
from report_views import Page, read_html, read_markdown

from kic import parameters, reports
from kic.data.prepare import PrepareOptions, prepare_dataset
from kic.evaluation import comparison as comparisons
from kic.evaluation import report as evaluation_report
from kic.evaluation.gate import decide
from kic.evaluation.metrics import evaluate_predictions
from kic.tuning import report as tuning_report
from kic.tuning import settings as tuning_settings
from kic.tuning.trials import FAILED, SUCCEEDED, TrialResult

HOSTILE = {
    "tag": "<img src=x onerror=alert(1)>",
    "attribute": '" onmouseover="alert(1)',
    "pipe": "a|b",
    "emphasis": "**bold** _it_ ~~gone~~",
    "link": "[x](javascript:alert(1))",
    "code": "`rm -rf` ``x``",
    "newline": "line one\nline two",
    "entity": "&amp; &lt;b&gt;",
    "block": "# - 1. heading",
    "mathtext": "$\\frac{$ costs $5, not $6",  # a plot would read text between pairs of "$" as TeX, and fail
}
# What the reports themselves write; anything else came from a name.
PAGE_ELEMENTS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul", "li", "table",
                 "thead", "tbody", "tr", "th", "td", "div", "figure", "figcaption", "img", "strong", "code", "br"}
PAGE_ATTRIBUTES = {"lang", "charset", "class", "src", "alt", "title"}
MARKDOWN_ELEMENTS = {"h1", "h2", "h3", "p", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "strong"}


def _words(text: str) -> str:
    return " ".join(text.split())


def _assert_names_are_text(page: Page, name: str, elements: set[str], attributes: set[str]) -> None:
    assert {tag for tag, _ in page.elements} <= elements
    assert {attribute for _, found in page.elements for attribute in found} <= attributes
    assert all(found["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
               for found in page.tags("img"))
    for table in page.tables:
        assert len({len(row) for row in table}) == 1, table  # a name neither split a row nor ended it
    assert _words(name) in _words("\n".join(page.texts))  # shown as written, whitespace aside


def _assert_safe(markdown: str, html: str, name: str) -> None:
    assert "<" not in markdown  # the viewer passes raw HTML through: no tag may reach it
    # Markdown tables get an alignment style; nothing else has attributes.
    _assert_names_are_text(read_markdown(markdown), name, MARKDOWN_ELEMENTS, {"style"})
    _assert_names_are_text(read_html(html), name, PAGE_ELEMENTS, PAGE_ATTRIBUTES)


# --------------------------------------------------------------------------- data report


@pytest.fixture(scope="module")
def data_reports(tmp_path_factory):
    """One prepare run whose class names (where a name can be one: no newline)
    and rejected files' names are the hostile ones."""
    root = tmp_path_factory.mktemp("hostile")
    for position, name in enumerate(HOSTILE.values()):
        folder = root / "source" / _class_name(name)
        folder.mkdir(parents=True)
        for index in range(6):
            (folder / f"img{index}.jpg").write_bytes(noise_jpeg(size=(40, 30), seed=100 * position + index))
        (folder / f"{name}.jpg").write_bytes(b"not an image")  # rejected, listed by its name
    output = root / "prepared"
    result = prepare_dataset(PrepareOptions(source=str(root / "source"), output_dir=str(output), image_short_side=24,
                                            workers=1, max_rejected_fraction=0.5))
    assert result.report["rejected"]["by_reason"] == {"not_an_image": len(HOSTILE)}
    return result.markdown, result.html


def _class_name(name: str) -> str:
    """The name as a class folder's: prepare refuses a newline or a backslash there."""
    return "two lines" if "\n" in name else name.replace("\\", "")


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_data_report_shows_hostile_class_and_file_names_as_text(data_reports, name):
    markdown, html = data_reports
    _assert_safe(markdown, html, _class_name(name))
    _assert_safe(markdown, html, f"{name}.jpg")


# --------------------------------------------------------------------------- evaluation report


BASELINE = "gs://models/" + " ".join(HOSTILE.values())


@pytest.fixture(scope="module")
def evaluation_reports():
    """Every hostile name a class of one evaluation, new since a baseline whose URI holds them too."""
    names = ["cat", *HOSTILE.values()]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(names), size=200)
    logits = rng.normal(size=(len(labels), len(names)))
    logits[np.arange(len(labels)), labels] += 2.0
    result = evaluate_predictions(labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), names,
                                  binary_mode=False)
    comparison = comparisons.Comparison(
        baseline_model=BASELINE, new=result, baseline=result, compared_on="on the same 200 test images",
        added_classes=tuple(names[1:]), removed_classes=(),
        data_changes=comparisons.data_changes({name: {"test": 20} for name in names}, {"cat": {"test": 10}}, names,
                                              ["cat"]))
    blessing = decide(result.scalars, metric="accuracy", minimum=0.999, baseline_model=BASELINE,
                      added_classes=tuple(names[1:]))
    misclassified = [{"image": noise_jpeg(size=(24, 16), seed=index), "true": name, "predicted": "cat",
                      "confidence": 0.5 + index / 100} for index, name in enumerate(names[1:])]
    html = evaluation_report.render_html(result, title="Evaluation of " + " ".join(names), blessing=blessing,
                                         misclassified=misclassified, comparison=comparison)
    return evaluation_report.render_markdown(result, blessing=blessing, comparison=comparison), html


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_evaluation_report_shows_hostile_class_names_and_uris_as_text(evaluation_reports, name):
    markdown, html = evaluation_reports
    _assert_safe(markdown, html, name)
    _assert_safe(markdown, html, BASELINE)
    # The attribute holds the name, and only it.
    assert f"true {name}, predicted cat" in [image["alt"] for image in read_html(html).tags("img")]


# --------------------------------------------------------------------------- tuning report


@pytest.fixture(scope="module")
def tuning_reports():
    """A search over the optimizer whose levels are the hostile names; each
    succeeded once, and failed once with an error that quotes it."""
    values = parameters.resolve({"data_source": "/data", "epochs": 2}, reachability=False)
    settings = tuning_settings.resolve({"parameters": {"learning_rate": {"min": 1e-4, "max": 0.1, "scale": "log"},
                                                       "optimizer": ["adam", "sgd"]}},
                                       values=values, trials=2 * len(HOSTILE), parallelism=2)
    results = []
    for index, name in enumerate(HOSTILE.values()):
        for failed in (False, True):
            results.append(TrialResult(
                trial=len(results), wave=1 + len(results) // 2, status=FAILED if failed else SUCCEEDED,
                objective=None if failed else 0.5 + index / 100, epochs_run=0 if failed else 2,
                seconds=1.0 + index, hyperparameters={"learning_rate": 10 ** -(1 + index / 3), "optimizer": name},
                error=f"cannot read {name}" if failed else ""))
    document = tuning_report.trials_document(settings, results, results[-2])
    # The renderers read trials.json, whatever wrote it: a value searched over is
    # data there too, though today's settings allow only known optimizers.
    for dimension in document["search_space"]:
        if dimension["name"] == "optimizer":
            dimension["values"] = list(HOSTILE.values())
    return tuning_report.render_markdown(document), tuning_report.render_html(document)


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_tuning_report_shows_hostile_values_and_errors_as_text(tuning_reports, name):
    markdown, html = tuning_reports
    _assert_safe(markdown, html, name)
    _assert_safe(markdown, html, f"cannot read {name}")


def test_the_tuning_summary_shows_the_best_trials_value_as_text(tuning_reports):
    markdown, html = tuning_reports
    _assert_safe(markdown, html, f"optimizer={list(HOSTILE.values())[-1]}")


# --------------------------------------------------------------------------- where no writer puts a name yet


def test_a_name_that_begins_a_line_cannot_begin_a_block():
    """No report starts a line with a name today; a paragraph or list item that did would not become a heading,
    a nested list or a thematic break."""
    names = [HOSTILE["block"], "2) second", "+ plus", "---", "=== under"]
    markdown = reports.render_markdown(reports.Report("r", [*map(reports.Paragraph, names), reports.Bullets(names)]))
    page = read_markdown(markdown)
    assert [tag for tag, _ in page.elements] == ["h1", *["p"] * len(names), "ul", *["li"] * len(names)]
    assert [text for text in page.texts if text.strip()] == ["r", *names, *names]
