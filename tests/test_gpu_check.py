"""`python -m benchmarks.gpu`, the GPU check, runs its code paths on CPU (--small); rows over the budget are marked skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import gpu


@pytest.mark.slow
def test_gpu_check_prints_its_table_and_marks_skipped_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.md"
    assert gpu.main(["--small", "--device", "cpu", "--budget-s", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip() == out.read_text().strip()
    assert "| measurement | images/s | note |" in text and "GPU check:" in text
    assert "ResNet-50 train, synthetic tensors on the device" in text  # the first row always runs
    skipped = [line for line in text.splitlines() if "skipped: over the time budget" in line]
    assert len(skipped) >= 5  # the budget is spent: every later row says so instead of vanishing
    for what in ("real loader", "evaluation", "fused K=4", "compiled", "separate"):
        assert any(what in line for line in skipped), what
