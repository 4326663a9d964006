"""Choosing pipeline stages and micro-batches (moesched.pipelinechoice, ``layouts --pp auto``):
the fastest candidate that fits wins, stages divide the nodes and layers, memory follows the
first stage's micro-batches in flight, bad input is one line."""
from __future__ import annotations

from dataclasses import replace

import pytest

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.memory import rank_memory
from moesched.models import PRESETS
from moesched.network import load_network
from moesched.pipelinechoice import compare_pipelines, pipeline_option
from moesched.profile import Profile

NVLINK = Profile.load("h200x4-nvlink")
NET = load_network("dgx-h200")


def test_the_fastest_candidate_that_fits_is_chosen() -> None:
    """Qwen3-30B-A3B (8 layers) on 8 nodes: all-to-alls over 64 ranks against stages of one
    node each; every candidate's stages divide the nodes and the layers."""
    m = PRESETS["Qwen3-30B-A3B"].with_layers(8)
    opts, chosen = compare_pipelines(m, Cluster(8, 8, network=NET), NVLINK, 0)
    ok = [o for o in opts if o.step_us is not None]
    assert chosen.step_us == min(o.step_us for o in ok)
    assert {(o.pp, o.microbatches) for o in opts} >= {(1, 1), (2, 2), (4, 4), (8, 8)}
    assert all(8 % o.pp == 0 and m.layers % o.pp == 0 for o in opts)
    for o in ok:
        assert o.step_us == pytest.approx(o.pipeline_us + o.grad_us)


def test_first_stage_memory_is_its_layers_with_the_micro_batches_in_flight() -> None:
    m = PRESETS["LLaMA2-MoE"]
    c = Cluster(4, 4, network=NET)
    o = pipeline_option(m, c, NVLINK, 4, 8, 1)
    stage = replace(m, micro_batch=m.micro_batch * 4 // 8).with_layers(8)
    base = rank_memory(stage, Cluster(1, 4, ep=o.ep), 1)
    assert o.memory.params_bytes == base.params_bytes < rank_memory(m, Cluster(4, 4, ep=o.ep), 1).params_bytes
    assert o.memory.activations_bytes == 4 * base.activations_bytes  # min(pp, m) = 4 in flight


def test_candidates_that_do_not_divide_or_fit_say_why() -> None:
    m = PRESETS["LLaMA2-MoE"]
    assert pipeline_option(m, Cluster(3, 4, network=NET), NVLINK, 2, 2, 0).problem == "does not divide"
    with pytest.raises(MoeschedError, match="no pipeline of Mixtral-8x22B runs on 8x8: .*binding term"):
        compare_pipelines(PRESETS["Mixtral-8x22B"], Cluster(8, 8, network=NET), NVLINK, 1)


def test_cli_pp_auto_prints_the_table_and_bad_values_are_one_line(capsys: pytest.CaptureFixture) -> None:
    argv = ["layouts", "--model", "LLaMA2-MoE", "--cluster", "2x4", "--network", "dgx-h200", "--time-limit", "1"]
    assert main(argv + ["--pp", "auto"]) == 0
    out = capsys.readouterr().out
    assert "no pipeline" in out and "PP2 x 2" in out and "why: " in out
    assert main(argv + ["--pp", "auto", "--microbatches", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: ") and err.count("\n") == 1 and "divides the samples of no pipeline" in err
    with pytest.raises(SystemExit) as e:
        main(argv + ["--pp", "many"])
    assert e.value.code == 2 and "number of stages or 'auto'" in capsys.readouterr().err
