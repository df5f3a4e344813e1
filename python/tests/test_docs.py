"""The README's Python example and the ONNX snippet of docs/python.md run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path, after):
    """The ```python blocks of a Markdown file that follow the heading `after`."""
    text = path.read_text()
    start = text.index(after)
    return re.findall(r"```python\n(.*?)```", text[start:], flags=re.S)


def test_readme_example_and_onnx_snippet(tmp_path, monkeypatch, capsys):
    if not (ROOT / "README.md").exists():
        pytest.skip("run from a checkout of the repository")
    (example,) = python_blocks(ROOT / "README.md", "## Python")[:1]
    onnx_snippet = python_blocks(ROOT / "docs" / "python.md", "## ONNX")[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    dimension, score = capsys.readouterr().out.split()
    # What the comment in the example promises.
    assert int(dimension) == 2 and float(score) > 0.99999
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.json").is_file()
    exec(compile(onnx_snippet, "docs/python.md", "exec"), namespace)
