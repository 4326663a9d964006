"""The layout search (moesched.solve.layout): EP candidates, memory filtering, the choice
and its reason, ``/epN`` fixing EP, and the CLI's layout table and refusals."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.memory import rank_memory
from moesched.models import MoEModel
from moesched.plan import Plan
from moesched.profile import Profile
from moesched.solve import solve
from moesched.solve.layout import ep_candidates, solve_layout

ROOT = Path(__file__).resolve().parent.parent
NVLINK = ROOT / "profiles" / "h200x4-nvlink.json"
TWO_NODES = ROOT / "profiles" / "h200x4-2nodes.json"
TINY = MoEModel.from_name("GPT2-Tiny-MoE", layers=2)


@pytest.fixture(scope="module")
def nvlink() -> Profile:
    return Profile.load(NVLINK)


def test_candidates_divide_world_and_experts() -> None:
    assert ep_candidates(TINY, Cluster(1, 4)) == [1, 2, 4]
    assert ep_candidates(MoEModel.from_name("Mixtral-8x7B"), Cluster(4, 8)) == [1, 2, 4, 8]
    assert ep_candidates(MoEModel.from_name("Qwen3-30B-A3B"), Cluster(2, 6)) == [1, 2, 4]
    assert ep_candidates(TINY, Cluster(1, 4, ep=2)) == [2]
    with pytest.raises(MoeschedError, match="not divisible"):
        ep_candidates(MoEModel.from_name("Mixtral-8x7B"), Cluster(2, 8, ep=16))


def test_chosen_is_fastest_and_equals_fixed_solve(nvlink: Profile) -> None:
    lay = solve_layout(TINY, Cluster(1, 4), nvlink)
    assert [r.ep for r in lay.rows] == [1, 2, 4] and all(r.result is not None for r in lay.rows)
    best = min(r.result.executed_us for r in lay.rows)  # type: ignore[union-attr]
    assert lay.result.executed_us == best
    fixed = solve(TINY, lay.cluster, nvlink)
    assert fixed.executed_us == pytest.approx(lay.result.executed_us, rel=1e-12)
    assert lay.cluster.ep == lay.chosen.ep and f"EP {lay.chosen.ep}" in lay.reason()
    # EP 1 all-reduces every expert's gradients over the world; EP 4 over one rank.
    by = {r.ep: r for r in lay.rows}
    assert by[1].grad_us > by[4].grad_us


def test_fixed_ep_solves_one_layout(nvlink: Profile) -> None:
    lay = solve_layout(TINY, Cluster(1, 4, ep=2), nvlink)
    assert [r.ep for r in lay.rows] == [2] and lay.cluster == Cluster(1, 4, ep=2)
    assert "only candidate" in lay.reason()


def test_layouts_that_do_not_fit_are_skipped(nvlink: Profile) -> None:
    """A GPU between the EP 4 and EP 2 memory: only EP 4 is solved; the others name why."""
    m = MoEModel.from_name("DeepSeek-V2-S", layers=2)
    need = {ep: rank_memory(m, Cluster(1, 4, ep=ep)).total_bytes for ep in (1, 2, 4)}
    assert need[1] > need[2] > need[4]
    small = dataclasses.replace(nvlink, hardware={**nvlink.hardware, "gpu_memory_bytes": (need[2] + need[4]) // 2})
    lay = solve_layout(m, Cluster(1, 4), small)
    assert lay.chosen.ep == 4 and [r.result is None for r in lay.rows] == [True, True, False]
    assert all("binding term" in (r.problem or "") for r in lay.rows[:2])
    assert "only one that fits" in lay.reason()
    tiny_gpu = dataclasses.replace(nvlink, hardware={**nvlink.hardware, "gpu_memory_bytes": need[4] - 1})
    with pytest.raises(MoeschedError, match=r"at any EP size \(1, 2, 4\).*binding term"):
        solve_layout(m, Cluster(1, 4), tiny_gpu)


def test_two_nodes_places_ep_across_nodes() -> None:
    prof = Profile.load(TWO_NODES)
    lay = solve_layout(TINY, Cluster(2, 2), prof)
    places = {r.ep: r.placement() for r in lay.rows}
    assert places == {1: "one rank (local)", 2: "inside a node", 4: "across 2 nodes"}


def test_cli_prints_layouts_and_writes_chosen_ep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", "GPT2-Tiny-MoE", "--layers", "2", "--profile", str(NVLINK),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layouts (ZeRO-0" in text and "chosen" in text and "why: EP" in text
    chosen = next(line.split()[0] for line in text.splitlines() if line.rstrip().endswith("chosen"))
    plan = Plan.load(out)
    assert plan.cluster.ep == int(chosen)


def test_cli_chooses_ep_on_a_world_the_experts_do_not_divide(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """8 experts on 2 x 8 GPUs without /epN: EP is searched among the sizes the experts
    allow (the world of 16 is not one), and the plan records the chosen one; with /ep16 the
    same request is refused in one line."""
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", "Mixtral-8x7B", "--layers", "2", "--cluster", "2x8", "--zero", "1",
                 "--profile", str(NVLINK), "--out", str(out), "--time-limit", "20"]) == 0
    assert Plan.load(out).cluster.ep in (1, 2, 4, 8)
    capsys.readouterr()
    assert main(["solve", "--model", "Mixtral-8x7B", "--layers", "2", "--cluster", "2x8/ep16", "--zero", "1",
                 "--profile", str(NVLINK), "--out", str(tmp_path / "p2.json")]) == 2
    assert "not divisible" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--model", "Mixtral-8x22B"], "binding term optimizer state"),
    (["--model", "Mixtral-8x22B", "--zero", "2"], "binding term activations"),
    (["--model", "Mixtral-8x7B", "--zero", "1"], "does not fit 1x4"),
    (["--model", "Mixtral-8x7B", "--cluster", "1x4/ep2", "--zero", "2"], "at EP 2, ZeRO-2"),
    # no EP size fits, a PPMoE layout does: the command that runs it
    (["--model", "Mixtral-8x22B", "--cluster", "8x8", "--network", "dgx-h200"],
     "; on 8x8: `moesched layouts --cluster 8x8 --zero 2` fits PPMoE TP8+SP (144.3 GB/rank)"),
    (["--model", "Mixtral-8x22B", "--cluster", "8x8", "--network", "dgx-h200", "--zero", "2"],
     "; on 8x8: `moesched layouts --cluster 8x8 --zero 2` fits PPMoE TP8+SP"),
])
def test_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> None:
    out = tmp_path / "plan.json"
    assert main(["solve", *argv, "--profile", str(NVLINK), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error: ") and needle in err[0]
    assert ("8x8" in argv) == ("moesched layouts --cluster" in err[0])  # on 1x4 no layout fits at any stage
    assert not out.exists()


def test_zero_stage_flag_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["solve", "--model", "GPT2-Tiny-MoE", "--zero", "3", "--out", str(tmp_path / "p.json")])
    assert e.value.code == 2
