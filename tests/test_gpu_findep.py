"""benchmarks/gpu_findep.py runs on the CPU (--cpu --small) without ortools and writes its
CSV and JSON with a priced and a measured time for every DEP task row."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ortools made unimportable: the GPU machine has none
RUN = ("import sys, runpy; sys.modules['ortools'] = None; sys.argv = ['gpu_findep.py'] + sys.argv[1:]; "
       "runpy.run_path('benchmarks/gpu_findep.py', run_name='__main__')")


def test_cpu_smoke_run_writes_the_files(tmp_path: Path) -> None:
    out = tmp_path / "findep"
    p = subprocess.run([sys.executable, "-c", RUN, "--cpu", "--small", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "findep_tasks.csv")))
    doc = json.loads((out / "findep_tasks.json").read_text())
    assert len(rows) == len(doc["rows"]) > 0
    assert {r["task"] for r in rows} == {"attn", "shared", "expert"}
    assert {r["preset"] for r in rows} == {"DeepSeek-V2-Lite", "Qwen3-30B-A3B", "Mixtral-8x7B"}
    assert all(float(r["measured_ms"]) > 0 and float(r["priced_ms"]) > 0 for r in rows)
    assert doc["summary"]["all"]["rows"] == len(rows) and doc["meta"]["device"] == "cpu"
    assert "mean |err|" in p.stdout and "max |err|" in p.stdout
