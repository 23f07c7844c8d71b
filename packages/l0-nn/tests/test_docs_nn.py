"""The residual-network example of docs/nn.md runs as written and shows what it claims."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[3] / "docs" / "nn.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SECTION = "### Residual networks and other custom `forward`s"


def section_blocks() -> list[str]:
    text = DOCS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return BLOCK.findall(text[start : end if end >= 0 else None])


def test_the_residual_export_example_runs_and_removes_the_channels_it_names():
    blocks = section_blocks()
    assert len(blocks) == 1
    namespace: dict = {"__name__": "docs_nn_residual"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "nn.md[residual]", "exec"), namespace)
    small = namespace["resnet_small"]
    assert small.layer1.conv1.out_channels == 8
    assert small.layer2.conv2.out_channels == 28
    assert small.get_submodule("layer2.shortcut.0").out_channels == 28
    assert small.fc.in_features == 28
    assert "->" in out.getvalue()
