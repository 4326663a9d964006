"""The cluster model: network presets and files, collective costs by algorithm, group size
and tiers, the held-out check on the two-emulated-node profile, and the CLI around them."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from moesched.cli import main
from moesched.cluster import Cluster, check_setup, comm_model
from moesched.collective_check import check_lines, held_out_world_points, summary_lines
from moesched.collectives import (OPS, Group, calibrate, cluster_group, dtree_edges, traffic,
                                  tree_efficiency)
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.network import NETWORKS_DIR, InterTier, load_network, preset_names
from moesched.profile import Profile

NVLINK = Profile.load("h200x4-nvlink")
TWO_NODES = Profile.load("h200x4-2nodes")
DGX = load_network("dgx-h200")
MB = 2**20


def assert_one_line_error(rc: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("moesched: error:"), (rc, err)


def test_every_preset_loads_and_is_listed(capsys: pytest.CaptureFixture) -> None:
    names = preset_names()
    assert {"dgx-h100", "dgx-h200", "h200x4-box", "v100-ib100"} <= set(names)
    for n in names:
        net = load_network(n)
        assert net.name == n and net.source.strip() and net.node_bytes_per_us > 0
    assert main(["clusters", "--sources"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names) and "Source:" in out


def _write(tmp: Path, **changes: object) -> Path:
    d = json.loads((NETWORKS_DIR / "dgx-h200.json").read_text())
    d.update(changes)
    p = tmp / "net.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("change", [
    {"version": 2}, {"inter": {"nics_per_node": 8}}, {"intra": {"bandwidth_GBps": -1.0, "latency_us": 1.0}},
    {"oversubscription": 0.5}, {"gpus_per_node": 2.5}, {"extra": 1}, {"name": ""},
    {"inter": {"nics_per_node": 8, "nic_bandwidth_Gbps": 1e-310, "latency_us": 1.0}},
    {"inter": {"nics_per_node": 8, "nic_bandwidth_Gbps": "fast", "latency_us": 1.0}},
    {"gpus_per_node": 10**400}, {"intra": {"bandwidth_GBps": 10**400, "latency_us": 1.0}}])
def test_malformed_network_is_one_line(change: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write(tmp_path, **change)
    before = path.read_bytes()
    rc = main(["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla", "--cluster", "2x8",
               "--network", str(path)])
    cap = capsys.readouterr()
    assert_one_line_error(rc, cap.err)
    assert cap.out == "" and path.read_bytes() == before


def test_unknown_or_invalid_network_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    for net in ("no-such-preset", str(tmp_path / "bad.json"), str(tmp_path / "missing.json")):
        rc = main(["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla", "--cluster", "2x8",
                   "--network", net])
        assert_one_line_error(rc, capsys.readouterr().err)


def test_no_default_network_for_a_cpu_profile(capsys: pytest.CaptureFixture) -> None:
    rc = main(["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla", "--profile", "cpu-gloo-2",
               "--cluster", "2x2"])
    cap = capsys.readouterr()
    assert_one_line_error(rc, cap.err)
    assert "no network preset is the default for 'CPU (x86_64)'" in cap.err and cap.out == ""


def test_node_size_differs_without_intra_tier() -> None:
    c = Cluster(2, 8, network=replace(DGX, intra=None))
    with pytest.raises(MoeschedError, match="8 GPUs per node.*measured 4.*states no intra-node tier"):
        check_setup(16, c, NVLINK)
    check_setup(8, Cluster(2, 4, network=replace(DGX, intra=None)), NVLINK)  # the profile's node: fine
    with pytest.raises(MoeschedError, match="no network describes"):
        check_setup(8, Cluster(2, 4), NVLINK)


def test_group_inside_a_node_never_pays_the_inter_tier() -> None:
    slow = replace(DGX, inter=InterTier(1, 0.001, 1e6))  # 1 Mb/s, 1 s per hop
    fast, crawl = calibrate(NVLINK, DGX, 8), calibrate(NVLINK, slow, 8)
    for op in OPS:
        for g in (Group(2, 1, 2), Group(8, 1, 8), Group(4, 1, 4, concurrent=2)):
            for x in (64e3, 16 * MB, 512 * MB):
                assert fast.us(op, g, x) == crawl.us(op, g, x) > 0
        spanning = Group(16, 2, 8)
        assert crawl.us(op, spanning, MB) > 100 * fast.us(op, spanning, MB)


@pytest.mark.parametrize("op", OPS)
def test_time_grows_with_group_size_and_tiers(op: str) -> None:
    model = calibrate(NVLINK, DGX, 8)
    for x in (256e3, 8 * MB, 256 * MB):
        inside = [model.us(op, Group(p, 1, p), x) for p in (2, 4, 8)]
        across = [model.us(op, Group(8 * n, n, 8), x) for n in (2, 4, 32)]
        assert inside == sorted(inside) and inside[0] < inside[-1], (x, inside)
        assert across == sorted(across) and across[0] < across[-1], (x, across)
        assert inside[-1] < across[0], (x, inside, across)  # leaving the node costs more
        # 16 ranks on 16 nodes (every node's 8 GPUs in such groups at once) vs on 2 nodes
        assert model.us(op, Group(16, 2, 8), x) < model.us(op, Group(16, 16, 1, concurrent=8), x)


def test_cluster_groups() -> None:
    assert cluster_group(4, 8, 8, "ep") == Group(8, 1, 8)
    assert cluster_group(4, 8, 4, "ep") == Group(4, 1, 4, 2)
    assert cluster_group(4, 8, 16, "ep") == Group(16, 2, 8)
    assert cluster_group(4, 8, 16, "ep_inter") == Group(2, 2, 1, 8)
    assert cluster_group(4, 8, 8, "expert_dp") == Group(4, 4, 1, 8)
    assert cluster_group(4, 8, 4, "expert_dp") == Group(8, 4, 2, 4)
    assert cluster_group(4, 8, 8, "dp") == Group(32, 4, 8)
    with pytest.raises(MoeschedError, match="neither divides"):
        cluster_group(4, 8, 12, "ep")


def _durations(cluster: Cluster, profile: Profile, model: MoEModel, knobs: Knobs) -> dict[str, float]:
    return {n: a["duration_us"] for n, a in build(model, cluster, profile, knobs).nodes(data=True)}


def test_profiled_layout_keeps_measured_prices() -> None:
    m = MoEModel.from_name("GPT2-Tiny-MoE")
    k = Knobs.uniform(m.layers, 2)
    for prof in (NVLINK, TWO_NODES):
        c = Cluster(prof.nodes, prof.gpus_per_node)
        assert comm_model(replace(c, network=DGX), prof) is None
        assert _durations(c, prof, m, k) == _durations(replace(c, network=DGX), prof, m, k)


def test_larger_clusters_cost_more_communication() -> None:
    m = MoEModel.from_name("Mixtral-8x7B", layers=2)
    k = Knobs.uniform(2, 1)
    grads = []
    for nodes in (1, 4, 128):
        d = _durations(Cluster(nodes, 8, ep=8, network=DGX), NVLINK, m, k)
        grads.append(sum(v for n, v in d.items() if n.startswith("G.")))
        a2a = [v for n, v in d.items() if "dispatch" in n]
        assert a2a and all(v > 0 for v in a2a)
    assert grads == sorted(grads) and grads[0] < grads[-1], grads


def held_out_errors() -> dict[str, list[float]]:
    """Relative errors of the whole-world points of the two-emulated-node profile predicted
    from its intra- and inter-node points alone (the world points held out)."""
    points = held_out_world_points(TWO_NODES, load_network("h200x4-box"))
    return {op: [p.err for p in points if p.op == op] for op in OPS}


def test_held_out_world_collectives_of_two_node_profile() -> None:
    errs = held_out_errors()
    assert {op: len(e) for op, e in errs.items()} == {op: len(TWO_NODES.comm[op]["world"].points) for op in OPS}
    mean = {op: sum(map(abs, e)) / len(e) for op, e in errs.items()}
    overall = sum(abs(x) for e in errs.values() for x in e) / sum(len(e) for e in errs.values())
    print({op: round(v, 3) for op, v in mean.items()}, round(overall, 3))
    assert mean["all_to_all"] <= 0.10 and mean["all_reduce"] <= 0.14, mean
    assert overall <= 0.13, (overall, mean)  # the goal is 0.10: see docs/results.md, "Held-out collectives"
    # the bandwidth-bound end (>= 128 MB): all-reduce (NCCL's double binary tree) within 10%,
    # the rings and the all-to-all within 31%
    for op in OPS:
        pts = TWO_NODES.comm[op]["world"].points
        bound = 0.10 if op == "all_reduce" else 0.31
        assert all(abs(e) <= bound for (x, _), e in zip(pts, errs[op]) if x >= 128 * MB), (op, errs[op])


def test_held_out_points_keep_their_passes_and_floor() -> None:
    """A profile that keeps each pass's median (``--comm-passes``) gives each held-out
    point its floor: the mean distance of one pass's median from the point's median."""
    x, t = TWO_NODES.comm["all_gather"]["world"].points[3]
    meta = dict(TWO_NODES.meta, comm_pass_us={f"all_gather.world@{int(x)}": [0.9 * t, t, 1.2 * t]})
    points = held_out_world_points(replace(TWO_NODES, meta=meta), load_network("h200x4-box"))
    (p,) = [p for p in points if p.pass_us]
    assert (p.op, p.nbytes, p.measured_us) == ("all_gather", x, t) and p.floor == pytest.approx(0.1)
    assert all(q.floor is None for q in points if q is not p)  # the committed profile keeps only spreads
    lines = summary_lines(points)
    assert len(lines) == len(OPS) + 1 and lines[-1].startswith("all") and "floor 10.0%" in lines[2]
    assert "floor" not in lines[0]


def test_held_out_check_needs_a_multi_node_profile() -> None:
    with pytest.raises(MoeschedError, match="several nodes of several GPUs"):
        held_out_world_points(NVLINK, load_network("h200x4-box"))
    comm = {op: {k: v for k, v in by.items() if k != "world"} for op, by in TWO_NODES.comm.items()}
    with pytest.raises(MoeschedError, match="lacks the intra, inter and world points of all_to_all"):
        held_out_world_points(replace(TWO_NODES, comm=comm), load_network("h200x4-box"))


def test_heldout_collectives_script(capsys: pytest.CaptureFixture) -> None:
    """benchmarks/heldout_collectives.py prints the check's lines; a one-node profile or an
    unknown network is one line and exit 2."""
    import runpy
    main_ = runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" / "heldout_collectives.py"))["main"]
    assert main_(["--points"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 56 + 1 + len(OPS) + 1 and out[-1].startswith("all              56 points: mean  12.6%")
    for argv in (["h200x4-nvlink"], ["--network", "nope"]):
        assert_one_line_error(main_(argv), capsys.readouterr().err)


def test_double_binary_tree_traffic() -> None:
    """NCCL's double binary tree: on two nodes each sends x (half up one tree, half down
    the other), from four nodes on 2x like a ring; its chain inside a node sends x/2 per
    neighbour per tree; medium sizes run at NCCL's tree correction factor."""
    assert [dtree_edges(n) for n in (1, 2, 3, 4, 5, 8, 129)] == [0, 2, 3, 4, 4, 4, 4]
    x = 64 * MB
    assert traffic("all_reduce", "tree", Group(4, 2, 2), x).node_bytes == x
    assert traffic("all_reduce", "tree", Group(32, 4, 8, concurrent=2), x).node_bytes == 2 * 2 * x
    assert traffic("all_reduce", "tree", Group(4, 2, 2), x).intra_bytes == x
    assert traffic("all_reduce", "tree", Group(16, 2, 8), x).intra_bytes == 2 * x
    assert traffic("all_reduce", "ring", Group(4, 2, 2), x).node_bytes == 1.5 * x
    assert tree_efficiency(64) == 0.9 and tree_efficiency(4 * MB) == 0.7 and tree_efficiency(512 * MB) == 1.0


def test_cli_cluster_beyond_the_profile(capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla", "--cluster", "32x8/ep8"]) == 0
    out = capsys.readouterr().out
    assert "network: dgx-h200, the default for NVIDIA H200" in out and "256 ranks" in out
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla", "--cluster", "4x8/ep16",
                 "--network", "v100-ib100"]) == 0
    assert "network: v100-ib100 (collectives priced" in capsys.readouterr().out


def test_a_group_shaped_like_a_profiled_scope_keeps_its_measured_price() -> None:
    from moesched.cluster import collective_us
    c = Cluster(4, 2, network=load_network("h200x4-box"))  # the 2x2 profile's nodes, twice as many
    for x in (1e5, 8e6, 3e8):
        assert collective_us(c, TWO_NODES, "all_to_all", "ep_intra", x) == TWO_NODES.a2a_us("intra", x)
        assert collective_us(c, TWO_NODES, "all_reduce", "ep_intra", x) == TWO_NODES.comm_us("all_reduce", "intra", x)
        # the 4-node flat all-to-all has no measured counterpart: priced by the model, above the 2-node one
        assert collective_us(c, TWO_NODES, "all_to_all", "ep", x) > TWO_NODES.a2a_us("world", x) * 0.9


def test_plan_beyond_the_profile_records_its_network(tmp_path: Path) -> None:
    """A plan solved for a cluster beyond the profiled layout carries the network that priced
    it: loaded back, it replays to its prediction; a broken network inside is one line."""
    from moesched.plan import Plan
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", "GPT2-Tiny-MoE", "--layers", "2", "--cluster", "4x8/ep8",
                 "--network", "v100-ib100", "--out", str(out), "--time-limit", "5"]) == 0
    plan = Plan.load(out)
    assert plan.cluster.network == load_network("v100-ib100")
    assert plan.replay(NVLINK).makespan_us == pytest.approx(plan.predicted["step_us"], rel=1e-6)
    d = json.loads(out.read_text())
    d["cluster"]["network"]["inter"]["nic_bandwidth_Gbps"] = -1
    with pytest.raises(MoeschedError, match="cluster.network: inter.nic_bandwidth_Gbps"):
        Plan.from_dict(d)


def test_profile_check_prints_the_held_out_check_of_a_multi_node_profile(capsys: pytest.CaptureFixture) -> None:
    """`moesched profile --check` ends with the held-out check on a profile of several nodes
    of several GPUs, says why not where the GPU has no default network, and adds nothing
    for one node."""
    assert main(["profile", "--check", "h200x4-2nodes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-6].startswith("cluster model: the whole-world collectives predicted") and "dgx-h200" in out[-6]
    assert out[-1] == "  " + summary_lines(held_out_world_points(TWO_NODES, DGX))[-1]
    assert check_lines(replace(TWO_NODES, hardware=dict(TWO_NODES.hardware, gpu="TPU v5"))) == [
        "cluster model on the whole-world points: not checked (no network preset is made for 'TPU v5')"]
    assert check_lines(NVLINK) == []


def test_torchrun_flags_of_a_cluster() -> None:
    """What an error tells a user to start a plan's job with."""
    assert Cluster(1, 4).torchrun_flags() == "--nproc_per_node=4"
    assert Cluster(2, 8, ep=8).torchrun_flags() == \
        "--nnodes=2 --nproc_per_node=8, or on one host --nproc_per_node=16 --emulate-nodes 2"
