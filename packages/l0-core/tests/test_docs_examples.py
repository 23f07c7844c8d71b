"""The Python examples in docs/core.md and docs/plugins.md run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[3] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


@pytest.mark.parametrize("page", ["core.md", "plugins.md"])
def test_every_python_block_of_the_page_runs_in_order(page):
    blocks = python_blocks(page)
    assert len(blocks) >= 5
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - message for the failing block
                raise AssertionError(f"{page} block {i} failed: {exc!r}\n{block}") from exc
    assert out.getvalue()


def test_core_page_median_example_prints_the_numbers_it_claims():
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in python_blocks("core.md")[:3]:
            exec(block, namespace)
    gate, paper = namespace["gate"], namespace["paper"]
    assert gate.prob_active().item() == pytest.approx(0.40, abs=0.005)
    assert gate.eval()().item() == 0.0
    assert paper.eval()().item() == pytest.approx(0.2227, abs=1e-4)


def test_plugins_page_loss_example_gives_ten_percent_errors():
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for block in python_blocks("plugins.md"):
            exec(block, namespace)
    loss = namespace["loss"]
    torch = namespace["torch"]
    assert loss(
        torch.tensor([90.0, 220.0]), torch.tensor([100.0, 200.0])
    ).tolist() == pytest.approx([0.1, 0.1])
