"""Every Python example in the README and on the documentation pages runs as written (each
page's examples in order, in one namespace, as a reader would paste them)."""

import glob
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
PAGES = sorted([os.path.join(ROOT, "README.md")]
               + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def examples(path):
    with open(path) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def page_id(path):
    return os.path.relpath(path, ROOT)


def test_the_pages_have_examples():
    assert sum(len(examples(p)) for p in PAGES) >= 12


@pytest.mark.parametrize("path", [p for p in PAGES if examples(p)], ids=page_id)
def test_page_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs"}
    for index, code in enumerate(examples(path)):
        exec(compile(code, f"{page_id(path)} example {index}", "exec"), namespace)
