"""``--pp`` and ``--microbatches`` of ``moesched layouts`` and ``moesched solve``
(moesched.pipelineplan): stage times from the model's graph, the 1F1B pipeline of them, the
cross-micro-batch plans, and one-line errors for a layout that does not divide."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.models import PRESETS
from moesched.pipelineplan import check_pipeline, pipeline_report
from moesched.profile import Profile


def test_report_stage_times_come_from_the_graph_and_bubble_matches_formula() -> None:
    p = Profile.load("h200x4-nvlink")
    c = Cluster(p.nodes, p.gpus_per_node)
    model = PRESETS["LLaMA2-MoE"]
    one = pipeline_report(model, c, p, 1, 2)
    four = pipeline_report(model, c, p, 4, 2)
    assert one.p2p_us == 0.0 and four.p2p_us > 0.0
    # the stages split the one-stage times (spans of contiguous layers; the loss in the last)
    assert sum(four.fwd_us) == pytest.approx(one.fwd_us[0], rel=0.02)
    assert sum(four.bwd_us) == pytest.approx(one.bwd_us[0], rel=0.02)
    assert four.step_us >= 2 * (four.fwd_us[0] + four.bwd_us[0])
    # near-uniform stages idle about (S - 1) / (m + S - 1) of the step (plus the sends)
    assert four.idle_share == pytest.approx(four.bubble_formula, abs=0.03)
    assert [r.stop - r.start for r in four.layers] == [8] * 4


def test_check_pipeline_returns_the_micro_batch_model() -> None:
    assert check_pipeline(PRESETS["GPT2-Tiny-MoE"], 3, 4).micro_batch == 2
    with pytest.raises(MoeschedError, match="5 pipeline stages do not divide 12 layers"):
        check_pipeline(PRESETS["GPT2-Tiny-MoE"], 5, 1)


def test_layouts_prints_the_pipeline(capsys: pytest.CaptureFixture) -> None:
    assert main(["layouts", "--model", "GPT2-Tiny-MoE", "--pp", "2", "--microbatches", "4", "--time-limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "pipeline: 2 stages x 4 micro-batches, 1F1B" in out
    assert re.search(r"^\s+1\s+6-11\s+\d+\.\d+\s+\d+\.\d+$", out, re.M)
    assert re.search(r"pipelined step: [\d.]+ ms; idle share [\d.]+% \(uniform-stage bubble .* = 20\.0%\)", out)


def test_layouts_prints_cross_micro_batch_plans(capsys: pytest.CaptureFixture) -> None:
    assert main(["layouts", "--model", "GPT2-Tiny-MoE", "--microbatches", "2", "--time-limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "micro-batches: 2 of 4 samples per rank" in out
    steps = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(single|combined-1f1b|dualpipe|moesched)\s+"
                                                                 r"([\d.]+)", out, re.M)}
    assert set(steps) == {"single", "combined-1f1b", "dualpipe", "moesched"}
    assert steps["moesched"] <= min(steps.values())


def test_solve_prints_the_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["solve", "--model", "GPT2-Tiny-MoE", "--layers", "4", "--pp", "2", "--microbatches", "2",
            "--time-limit", "1", "--out", str(tmp_path / "p.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pipeline: 2 stages x 2 micro-batches" in out and (tmp_path / "p.json").exists()


@pytest.mark.parametrize("argv,what", [
    (["layouts", "--model", "GPT2-Tiny-MoE", "--pp", "5"], "5 pipeline stages do not divide 12 layers"),
    (["layouts", "--model", "GPT2-Tiny-MoE", "--microbatches", "3"],
     "3 micro-batches do not divide the batch of 8 samples per rank of GPT2-Tiny-MoE"),
    (["layouts", "--model", "GPT2-Tiny-MoE", "--pp", "0"], "--pp must be a positive integer, got 0"),
    (["layouts", "--model", "LLaMA2-MoE", "--microbatches", "-2"], "--microbatches must be a positive integer"),
    (["solve", "--model", "GPT2-Tiny-MoE", "--layers", "4", "--pp", "3"], "3 pipeline stages do not divide 4 layers"),
    (["solve", "--model", "DeepSeek-V2-S", "--microbatches", "4"], "4 micro-batches do not divide the batch of 2"),
])
def test_bad_pipeline_is_one_line(argv: list[str], what: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if argv[0] == "solve":
        argv = argv + ["--out", str(tmp_path / "p.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error:") and what in err[0]
    assert not (tmp_path / "p.json").exists()
