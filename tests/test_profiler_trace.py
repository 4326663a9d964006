"""Exposed communication of a user's torch.profiler trace (moesched.profiler_trace,
``moesched overlap``): kernels classified by name, busy unions, the uncovered part."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesched.cli import main
from moesched.profiler_trace import overlap_report, read_kernels


def _trace(path: Path, kernels: list[tuple[str, int, float, float]], labels=()) -> Path:
    ev = [{"ph": "X", "cat": "kernel", "name": n, "tid": tid, "pid": 0, "ts": ts, "dur": dur}
          for n, tid, ts, dur in kernels]
    ev += [{"ph": "X", "cat": "user_annotation", "name": n, "tid": 1, "pid": 0, "ts": ts, "dur": dur}
           for n, ts, dur in labels]
    ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "tid": 1, "pid": 0, "ts": 0, "dur": 5})
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


def test_exposed_communication_is_what_no_compute_covers(tmp_path: Path) -> None:
    """Compute 0-10 and 20-30 µs on stream 7; an NCCL all-reduce 5-25 and a DeepEP dispatch
    28-40 on stream 27: communication busy 5-25 and 28-40 (32 µs), uncovered 10-20 and 30-40."""
    t = _trace(tmp_path / "t.json", [("sm90_gemm", 7, 0, 10), ("flash_fwd", 7, 20, 10),
                                     ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 27, 5, 20),
                                     ("void dpsk::ep::internode::dispatch<false>", 27, 28, 12)],
               labels=[("attn(F)", 0, 10), ("attn(F)", 20, 10), ("ProfilerStep#1", 0, 40)])
    kernels, labels = read_kernels(t)
    assert [k.comm for k in kernels] == [False, False, True, True]
    r = overlap_report(kernels, labels)
    assert (r.span_us, r.compute_us, r.comm_us, r.exposed_comm_us) == (40, 20, 32, 20)
    assert r.hidden_share == pytest.approx(12 / 32) and labels == {"attn(F)": 20.0}


def test_cli_prints_the_report_and_refuses_bad_traces(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    t = _trace(tmp_path / "t.json", [("gemm", 7, 0, 10), ("ncclKernel_AllToAll", 9, 5, 10)])
    assert main(["overlap", str(t)]) == 0
    assert "exposed communication 0.01 ms: 50.0%" in capsys.readouterr().out
    none = _trace(tmp_path / "cpu.json", [])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    odd_tid = _trace(tmp_path / "tid.json", [("gemm", "stream?", 0, 10)])  # type: ignore[list-item]
    negative = _trace(tmp_path / "neg.json", [("gemm", 7, 0, -10)])
    nan = _trace(tmp_path / "nan.json", [("gemm", 7, float("nan"), 10)])
    for path, words in ((none, "no GPU kernels"), (bad, "JSON"), (tmp_path / "missing.json", "missing.json"),
                        (odd_tid, "no GPU kernels"), (negative, "dur >= 0"), (nan, "nan.json")):
        assert main(["overlap", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("moesched: error: ") and err.count("\n") == 1 and words in err
