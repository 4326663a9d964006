"""``moesched layouts``: EP against PPMoE layouts under the memory model, the choice explained;
bad input is one line and exit 2."""
from __future__ import annotations

import pytest

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.layoutchoice import compare_layouts
from moesched.models import PRESETS
from moesched.network import load_network
from moesched.profile import Profile


def test_only_sequence_parallel_tp8_fits(capsys: pytest.CaptureFixture) -> None:
    """Mixtral-8x7B on 8x8 H200 at ZeRO-0: no EP size fits 141 GB (optimizer state), TP8 with
    sequence parallelism does (activations split 8 ways), so it is chosen."""
    assert main(["layouts", "--model", "Mixtral-8x7B", "--cluster", "8x8", "--network", "dgx-h200",
                 "--time-limit", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.startswith(("EP", "PPMoE"))}
    assert rows["PPMoE TP8+SP"].endswith("chosen")
    assert "fits no cluster" in rows["EP (all-to-all)"]
    assert "does not fit" in rows["PPMoE TP8"] and "binding term activations" in rows["PPMoE TP8"]
    assert "why: PPMoE TP8+SP is the only layout that runs" in out


def test_choice_is_the_fastest_that_fits() -> None:
    m, p = PRESETS["LLaMA2-MoE"], Profile.load("h200x4-nvlink")
    opts, chosen = compare_layouts(m, Cluster(2, 4, network=load_network("h200x4-box")), p, 1, 2.0)
    ran = [o for o in opts if o.step_us is not None]
    assert len(ran) == len(opts) == 5  # EP, TP2, TP2+SP, TP4, TP4+SP
    assert chosen.step_us == min(o.step_us for o in ran)
    assert all(o.busy_us["a2a"] == 0 and o.busy_us["tp"] > 0 for o in opts if o.layout.tp > 1)
    assert opts[0].busy_us["a2a"] > 0 and opts[0].busy_us["tp"] == 0


@pytest.mark.parametrize("argv,what", [
    (["--model", "nope"], "nope"),
    (["--model", "LLaMA2-MoE", "--time-limit", "-1"], "time-limit"),
    (["--model", "LLaMA2-MoE", "--cluster", "3x"], "cannot parse cluster"),
    (["--model", "LLaMA2-MoE", "--cluster", ""], "cannot parse cluster"),
    (["--model", "LLaMA2-MoE", "--cluster", "99999999x8/ep8"], "at most 65536"),
    (["--model", "Mixtral-8x22B", "--cluster", "8x8", "--network", "dgx-h200"], "no layout of Mixtral-8x22B runs"),
    # the way out where one exists: the lowest ZeRO stage at which a layout fits
    (["--model", "Mixtral-8x22B", "--cluster", "8x8", "--network", "dgx-h200"],
     "; with --zero 2, PPMoE TP8+SP fits (144.3 GB/rank)"),
    (["--model", "Mixtral-8x22B", "--cluster", "8x8", "--network", "dgx-h200", "--zero", "1"], "with --zero 2, PPMoE"),
])
def test_bad_input_is_one_line(argv: list[str], what: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["layouts", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error:") and what in err[0]


def test_mixtral_8x22b_fits_with_experts_inside_tensor_parallelism(capsys: pytest.CaptureFixture) -> None:
    """The preset that fits no EP layout runs on 8x8 at ZeRO-2 as PPMoE TP8 with sequence
    parallelism (the only layout of seven under the memory model)."""
    assert main(["layouts", "--model", "Mixtral-8x22B", "--cluster", "8x8", "--network", "dgx-h200",
                 "--zero", "2"]) == 0
    out = capsys.readouterr().out
    chosen = [line for line in out.splitlines() if line.rstrip().endswith("chosen")]
    assert len(chosen) == 1 and chosen[0].startswith("PPMoE TP8+SP"), out
    assert out.count("does not fit") + out.count("fits no cluster") == 6


def test_no_zero_hint_where_no_stage_fits(capsys: pytest.CaptureFixture) -> None:
    """Where no layout fits at any stage (too few ranks to shard over), the error names no
    ZeRO stage."""
    for argv in (["--cluster", "4x8", "--model", "Mixtral-8x22B"], ["--cluster", "1x4", "--model", "Mixtral-8x22B"]):
        assert main(["layouts", "--network", "dgx-h200", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no layout of Mixtral-8x22B" in err, err
        assert "--zero" not in err.split(": EP")[1], err
