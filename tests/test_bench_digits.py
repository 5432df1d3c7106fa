"""The digits distillation benchmark end to end in --quick mode: the pipeline, not the quality."""
import glob
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_table_plot_and_rows(tmp_path):
    logdir, docs = tmp_path / "logs", tmp_path / "docs"
    out = subprocess.run(
        [sys.executable, "scripts/bench/distill_digits.py", "--quick", "--logdir", str(logdir), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

    (bench_dir,) = glob.glob(str(logdir / "*_digits_quick"))
    for d in (bench_dir, str(docs)):
        assert os.path.getsize(os.path.join(d, "digits_distillation.png")) > 1000
        table = open(os.path.join(d, "digits_distillation.md")).read()
        assert "python scripts/bench/distill_digits.py --quick" in table
        assert "| model | steps | NFE | accuracy | FD | coverage | ms/sample |" in table
    for name in ("teacher", "student_1step", "student_2step", "student_4step"):
        assert os.path.isfile(os.path.join(bench_dir, name, "checkpoints", "last.ckpt")), name

    rows = json.load(open(os.path.join(bench_dir, "digits_distillation.json")))["rows"]
    assert [(r["model"], r["steps"]) for r in rows] == [
        ("teacher", 1), ("teacher", 2), ("1-step student", 1), ("2-step student", 2), ("4-step student", 4)]
    assert [r["nfe"] for r in rows] == [2, 4, 1, 2, 4]  # teacher: CFG doubles; students: one per step
    for r in rows:
        assert r["n"] == 64
        for key in ("accuracy", "fd", "coverage", "sec_per_sample"):
            assert math.isfinite(r[key]), (r["model"], key)
        assert f"| {r['model']} | {r['steps']} | {r['nfe']} |" in table
