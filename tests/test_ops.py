"""Operator recipe (moesched.ops) against what the executor runs, operator tables
(moesched.optables): interpolation, format, precedence of the compute pricing."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from executor.profiling.bench import make_bench
from moesched import ops
from moesched.optables import GridTable, OpTables
from moesched.errors import MoeschedError
from moesched.kinds import ALL_COMPUTE_KINDS
from moesched.models import MoEModel
from moesched.profile import Cost, Profile

aten = torch.ops.aten


class Recorder(TorchDispatchMode):
    """Records (m, n, k) of every matrix product and the query shape of every attention."""

    def __init__(self) -> None:
        super().__init__()
        self.gemms: list[tuple[int, int, int]] = []
        self.attn: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (aten.mm.default, aten.mm.out):
            self.gemms.append((args[0].shape[0], args[1].shape[1], args[0].shape[1]))
        elif func in (aten.addmm.default, aten.addmm_.default, aten.addmm.out):
            self.gemms.append((args[1].shape[0], args[2].shape[1], args[1].shape[1]))
        elif func in (aten.bmm.default, aten._grouped_mm.default):
            self.gemms.append((-1, -1, -1))  # not in the fp32 recipe: fails the comparison
        elif "scaled_dot_product" in str(func):
            self.attn.append(("bwd" if "backward" in str(func) else "fwd", tuple(args[0].shape) if args[0].dim() else ()))
        return func(*args, **(kwargs or {}))


def _model(**kw) -> MoEModel:
    base = dict(name="t", layers=2, d_model=64, heads=4, seq_len=32, micro_batch=2, ffn_hidden=96, experts=4,
                top_k=2, capacity_factor=None, shared_experts=1, expert_kind="swiglu", router="topk_softmax",
                dtype="bf16")
    base.update(kw)
    return MoEModel(**base)


MODELS = [_model(), _model(expert_kind="gpt", shared_experts=0, capacity_factor=1.0, experts=8, top_k=1, heads=2),
          _model(router="xmoe", router_dim=8, shared_experts=0),
          _model(kv_heads=2, head_dim=32, qk_norm=True, rope_theta=1e6)]


@pytest.mark.parametrize("m", MODELS, ids=["swiglu-shared-dropless", "gpt-capacity", "xmoe-router", "gqa-headdim"])
@pytest.mark.parametrize("kind", ALL_COMPUTE_KINDS)
def test_recipe_gemms_are_what_the_task_runs(m: MoEModel, kind: str) -> None:
    """The executor's task function (CPU, fp32: experts loop over torch.mm) runs exactly the
    recipe's GEMMs, and its attention on the recipe's (bh, seq, head_dim)."""
    if kind.startswith("shared") and not m.shared_experts:
        pytest.skip("no shared experts")
    tokens = 64
    fn = make_bench(kind, m, tokens, "cpu", torch.float32)
    with Recorder() as rec:
        fn()
    recipe = ops.task_ops(kind, m, tokens, grouped=False, bytes_per_elem=4)
    want = sorted((o.m, o.n, o.k) for o in recipe if isinstance(o, ops.Gemm))
    assert sorted(rec.gemms) == want
    attn = [o for o in recipe if isinstance(o, ops.Attention)]
    assert [(("bwd" if o.backward else "fwd"), o.bh, o.seq, o.head_dim) for o in attn] == \
        [(d, s[0] * s[1], s[2], s[3]) for d, s in rec.attn]


def test_work_ops_inverts_the_work() -> None:
    """Pricing from FLOPs finds the task's tokens (expert kinds: copies) again."""
    from moesched import work
    m = _model(capacity_factor=1.0)
    for kind, f in (("attn_fwd", work.attn_fwd_flops), ("shared_fwd", work.shared_fwd_flops),
                    ("expert_fwd", work.expert_fwd_flops)):
        assert ops.work_ops(kind, m, f(m, 128)) == ops.task_ops(kind, m, 128)


def test_grid_interpolation_is_log_log() -> None:
    pts = {(a, b): a * b * (2.0 if a >= 64 else 1.0) for a in (16.0, 64.0, 256.0) for b in (8.0, 32.0)}
    del pts[(256.0, 32.0)]                   # a capped point: filled from the nearest, scaled by work
    g = GridTable(pts, (1.0, 1.0))
    assert g((64, 8)) == pytest.approx(64 * 8 * 2)
    assert g((32, 8)) == pytest.approx(math.sqrt(16 * 8 * 64 * 8 * 2))  # geometric mean halfway in log
    assert g((4, 2)) == pytest.approx(16 * 8)                          # below the grid: the edge's time
    assert g((1024, 8)) == pytest.approx(256 * 8 * 2 * 4)              # above: time per work held
    assert g((256, 32)) == pytest.approx(256 * 32 * 2)                 # filled point


TABLES = {"gemm": [[m, n, k, 1.0 + 2 * m * n * k / 1e6] for m in (16, 256) for n in (16, 256) for k in (16, 256)],
          "grouped": [[g, r, n, k, w, 0, 2.0 + 2 * g * r * n * k / 1e6] for g in (1, 8) for r in (16, 256)
                      for n in (16, 256) for k in (16, 256) for w in (0, 1)],
          "attention": [[bh, s, d, 1, b, 3.0 + bh * s * s * d / 1e6] for bh in (2, 8) for s in (16, 64)
                        for d in (16, 32) for b in (0, 1)],
          "mem": {"elementwise": [[1024, 2.0], [2**20, 4.0]]}}


def _profile(ops_d: dict | None, shapes: dict | None = None) -> Profile:
    line = Cost(5.0, 1e-6)
    p = Profile("t", "measured", "", {"gpu": "x", "nodes": 1, "gpus_per_node": 1, "gpu_memory_bytes": 1, "regime": "r"},
                {}, {k: line for k in ALL_COMPUTE_KINDS}, {"all_to_all": {"intra": line}, "all_reduce": {"intra": line}},
                )
    d = p.to_dict()
    if shapes:
        d["shapes"] = shapes
    if ops_d is not None:
        d["ops"] = ops_d
    return Profile.from_dict(json.loads(json.dumps(d)))


def test_precedence_and_dtypes() -> None:
    m = _model(seq_len=16, micro_batch=4)
    fl = 1e9
    old = _profile(None)
    assert old.ops is None and old.compute_us("attn_fwd", fl, None, m) == pytest.approx(5.0 + 1e3)
    p = _profile({"tables": {"bf16": TABLES, "fp32": {**TABLES, "gemm": [r[:3] + [r[3] * 8] for r in TABLES["gemm"]]}},
                  "correction": {"attn_fwd": {"alpha_us": 1.0, "scale": 2.0}}})
    assert p.to_dict()["ops"]["correction"] == {"attn_fwd": {"alpha_us": 1.0, "scale": 2.0}}
    bf = p.compute_us("attn_fwd", fl, None, m)
    raw = p.ops.ops_us("bf16", ops.work_ops("attn_fwd", m, fl, recipe=p.ops.recipe))  # its recipe: 1
    assert bf == pytest.approx(1.0 + 2.0 * raw) and bf != pytest.approx(5.0 + 1e3)
    assert p.compute_us("attn_fwd", fl, None, replace(m, dtype="fp32")) > bf   # fp32 tables are slower
    assert p.compute_us("attn_fwd", fl, None, replace(m, dtype="fp16")) == pytest.approx(5.0 + 1e3)  # no table
    assert p.compute_us("attn_fwd", fl) == pytest.approx(5.0 + 1e3)                # no model: the line
    fp = p.compute_us("attn_fwd", fl, None, replace(m, dtype="fp32"))
    d = p.to_dict()["ops"]
    q = _profile(dict(d, insitu={"bf16": {"attn_fwd": 1.3}}))   # an in-situ factor of bf16 only
    assert q.to_dict()["ops"]["insitu"] == {"bf16": {"attn_fwd": 1.3}}
    assert q.compute_us("attn_fwd", fl, None, m) == pytest.approx(1.3 * bf)
    assert q.compute_us("attn_fwd", fl, None, replace(m, dtype="fp32")) == pytest.approx(fp)
    assert q.ops.with_insitu({"bf16": {"attn_fwd": 1.3}}, undo=True).to_dict() == d
    own = _profile(dict(d, dtype_correction={"fp32": {"attn_fwd": {"alpha_us": 3.0, "scale": 1.0}}}))
    assert own.to_dict()["ops"]["dtype_correction"] == {"fp32": {"attn_fwd": {"alpha_us": 3.0, "scale": 1.0}}}
    raw32 = own.ops.ops_us("fp32", ops.work_ops("attn_fwd", replace(m, dtype="fp32"), fl, recipe=1))
    assert own.compute_us("attn_fwd", fl, None, replace(m, dtype="fp32")) == pytest.approx(3.0 + raw32)  # its own
    assert fp == pytest.approx(1.0 + 2.0 * raw32)                                  # the common one before
    assert own.compute_us("attn_fwd", fl, None, m) == pytest.approx(bf)           # bf16 keeps the common one
    old_rule = own.ops.scaled({"attn_fwd": 1.5, "loss": 2.0})                      # folds into both
    assert old_rule.correction["attn_fwd"] == (1.5, 3.0) and old_rule.dtype_correction == {"fp32": {"attn_fwd": (4.5, 1.5)}}
    curve = _profile({"tables": {"bf16": TABLES}}, shapes={m.shape_key(): {"attn_fwd": {"alpha_us": 7.0,
                                                                                         "beta_us_per_unit": 0.0}}})
    assert curve.compute_us("attn_fwd", fl, m.shape_key(), m) == 7.0              # the shape's curve first
    assert curve.compute_us("expert_fwd", fl, m.shape_key(), m) != pytest.approx(5.0 + 1e3)


@pytest.mark.parametrize("bad, word", [
    ({"tables": {}}, "ops.tables"),
    ({"tables": {"bf16": {**TABLES, "gemm": [[1, 2, 3]]}}}, "ops.tables.bf16.gemm[0]"),
    ({"tables": {"bf16": {**TABLES, "gemm": [[0, 2, 3, 1.0]]}}}, "ops.tables.bf16.gemm[0]"),
    ({"tables": {"bf16": {**TABLES, "gemm": [[1, 2, 3, 0.0]]}}}, "non-positive time"),
    ({"tables": {"bf16": {**TABLES, "mem": {"norm": [[1, 1.0]]}}}}, "elementwise"),
    ({"tables": {"bf16": TABLES}, "correction": {"attn_fwd": {"alpha_us": 1.0, "scale": -1}}}, "ops.correction"),
    ({"tables": {"bf16": TABLES}, "runs_as": "fp32"}, "runs_as"),
    ({"tables": {"bf16": TABLES}, "dtype_correction": {"fp32": {}}}, "ops.dtype_correction must map dtypes"),
    ({"tables": {"bf16": TABLES}, "dtype_correction": []}, "ops.dtype_correction must map dtypes"),
    ({"tables": {"bf16": TABLES}, "dtype_correction": {"bf16": {"attn": {"alpha_us": 1.0, "scale": 1.0}}}},
     "ops.dtype_correction.bf16 must map kinds"),
    ({"tables": {"bf16": TABLES}, "dtype_correction": {"bf16": {"loss": {"alpha_us": 1.0, "scale": 0}}}},
     "ops.dtype_correction.bf16.loss"),
    ({"tables": {"bf16": TABLES}, "extra": 1}, "ops must have keys"),
    ({"tables": {"bf16": TABLES}, "insitu": {"fp32": {"expert_fwd": 1.1}}}, "ops.insitu must map dtypes"),
    ({"tables": {"bf16": TABLES}, "insitu": []}, "ops.insitu must map dtypes"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": {"expert": 1.1}}}, "ops.insitu.bf16 must map kinds"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": 1.1}}, "ops.insitu.bf16 must map kinds"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": {"expert_fwd": 0}}}, "ops.insitu.bf16.expert_fwd"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": {"expert_fwd": -1.2}}}, "ops.insitu.bf16.expert_fwd"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": {"expert_fwd": 1001}}}, "ops.insitu.bf16.expert_fwd"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": {"expert_fwd": True}}}, "ops.insitu.bf16.expert_fwd"),
    ({"tables": {"bf16": TABLES}, "insitu": {"bf16": {"expert_fwd": "1.1"}}}, "ops.insitu.bf16.expert_fwd"),
])
def test_malformed_ops_is_one_error(bad: dict, word: str) -> None:
    with pytest.raises(MoeschedError) as e:
        _profile(bad)
    assert word in str(e.value) and "\n" not in str(e.value)


def test_shipped_profiles_load_without_ops() -> None:
    from moesched.profile import PROFILES_DIR
    for path in sorted(PROFILES_DIR.glob("*.json")):
        assert Profile.load(path).ops is None  # profiles measured before operator tables still load


# ---- mutated operator sections: a loaded profile prices, or the load is one error line ----
def _paths(x, path=()):
    if path:
        yield path
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, path + (i,))


BAD = [math.nan, math.inf, -1, 0, 0.0, 1e300, 10**30, 10**400, "x", [], [[1, 2]], {}, None, True, 2.5, 1]


def test_mutated_ops_sections_price_or_fail_in_one_line() -> None:
    import copy
    import random
    from moesched import work
    rnd = random.Random(7)
    base = {"tables": {"bf16": TABLES}, "correction": {"attn_fwd": {"alpha_us": 1.0, "scale": 2.0}},
            "dtype_correction": {"bf16": {"loss": {"alpha_us": 2.0, "scale": 1.5}}},
            "insitu": {"bf16": {"attn_fwd": 1.2, "expert_fwd": 0.9}}}
    m = _model(seq_len=16, micro_batch=4)
    for _ in range(300):
        d = copy.deepcopy(base)
        for _ in range(rnd.randint(1, 3)):
            path = rnd.choice(list(_paths(d)))
            node = d
            for k in path[:-1]:
                node = node[k]
            if isinstance(node, dict) and rnd.random() < 0.2:
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(rnd.choice(BAD))
        try:
            p = _profile(d)
        except MoeschedError as e:
            assert "\n" not in str(e)
            continue
        for kind in ALL_COMPUTE_KINDS:
            try:
                us = p.compute_us(kind, work.attn_fwd_flops(m, 64), None, m)
            except MoeschedError as e:
                assert "\n" not in str(e)
                continue
            assert math.isfinite(us) and us >= 0


class _Ranks:
    """One CPU rank, as the profiler's context looks to the timing functions."""

    cuda, rank, world, device = False, 0, 1, torch.device("cpu")

    def sync(self) -> None: ...

    def barrier(self) -> None: ...

    def gather(self, obj):
        return [obj]


def test_profiler_operator_tables_load_and_price() -> None:
    """The profiler's CPU --quick operator grid gives tables a profile accepts, which price
    every kind of a model (fp32, as the CPU runs it)."""
    from executor.profiling.ops import items_for, measure_ops
    assert len(items_for("fp32", False, True)) <= 150
    tables = measure_ops(_Ranks(), ["fp32"], quick=True, reps=1, warmup=0)
    p = _profile({"tables": tables, "runs_as": "fp32"})
    m = _model(seq_len=16, micro_batch=4)
    from moesched import work
    assert p.compute_us("expert_fwd", work.expert_fwd_flops(m, 64), None, m) > 0
    for kind in ALL_COMPUTE_KINDS:  # one timed run per point on a shared CPU: positive, not ordered
        us = p.compute_us(kind, work.attn_bwd_flops(m, 64), None, m)
        assert math.isfinite(us) and us > 0 and us != p.compute[kind](work.attn_bwd_flops(m, 64))


def test_gpu_fp32_gemm_grid_steps_outputs_by_half_octaves() -> None:
    """The GPU fp32 GEMM grid steps its output sizes m and n by at most 1.5x from 128 up and
    its reduction k by octaves, spanning 16-16,384, so no wave step of output tiles is
    bridged by an octave; the measured grid's points are all in it."""
    from executor.profiling.ops import items_for
    pts = [k for t, k in items_for("fp32", True, False) if t == "gemm"]
    for axis, step, start in ((0, 1.5, 128), (1, 1.5, 128), (2, 2.0, 256)):
        v = sorted({p[axis] for p in pts})
        assert v[0] == 16 and v[-1] == 16384 and max(b / a for a, b in zip(v, v[1:]) if a >= start) <= step
    assert {(1472, 4096, 1024), (512, 5824, 2048), (1024, 4096, 1024)} <= set(pts) and len(pts) <= 2300


def test_validate_pricing_columns() -> None:
    """ops_only drops the compute curves of every shape and keeps the in-situ all-to-alls."""
    from executor.validate import ops_only
    m = _model(seq_len=16, micro_batch=4)
    c = {"alpha_us": 7.0, "beta_us_per_unit": 0.0}
    p = _profile({"tables": {"bf16": TABLES}}, shapes={m.shape_key(): {"attn_fwd": c, "all_to_all@intra": c}})
    q = ops_only(p)
    assert q.shapes == {m.shape_key(): {"all_to_all@intra": p.shapes[m.shape_key()]["all_to_all@intra"]}}
    assert q.compute_us("attn_fwd", 1e9, m.shape_key(), m) == p.compute_us("attn_fwd", 1e9, None, m) != 7.0


def test_each_dtype_fits_its_own_correction() -> None:
    """The common correction is fitted on the dtype timed most; another dtype with enough
    rows of a kind gets its own; kinds it lacks fall back to the common one."""
    from moesched.costs.fit import fit_dtype_corrections
    rows = [("bf16", k, c, 10.0 + 1.4 * c) for k in ("attn_fwd", "loss") for c in (100.0, 200.0, 400.0, 800.0)]
    rows += [("fp32", "attn_fwd", c, 10.0 + 1.05 * c) for c in (1000.0, 2000.0, 4000.0)]
    rows += [("fp32", "loss", 50.0, 60.0)]  # too few rows of loss to fit
    common, own = fit_dtype_corrections(rows)
    assert set(common) == {"attn_fwd", "loss"} and common["attn_fwd"] == pytest.approx((10.0, 1.4), rel=1e-3)
    assert set(own) == {"fp32"} and set(own["fp32"]) == {"attn_fwd"}
    assert own["fp32"]["attn_fwd"] == pytest.approx((10.0, 1.05), rel=1e-3)
    assert fit_dtype_corrections([]) == ({}, {})


class KernelBytes(TorchDispatchMode):
    """Bytes of floating-point tensors each non-GEMM kernel reads and writes: views, sorts and
    matrix products skipped; a tensor written in place counted once, as written."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema, name = func._schema, str(func)
        if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns) or \
                func is aten.detach.default or any(s in name for s in ("mm", "sort", "scaled_dot")):
            return out
        written = {i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write}
        tensors = [a for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in written]
        tensors += [a for a in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(a, torch.Tensor)]
        self.nbytes += sum(t.numel() * t.element_size() for t in tensors if t.dtype.is_floating_point)
        return out


@pytest.mark.parametrize("dtype,nbytes", [(torch.bfloat16, 2), (torch.float32, 4)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("m", [_model(top_k=8, experts=8, shared_experts=0), _model(shared_experts=1)],
                         ids=["top8", "top2-shared"])
def test_recipe_loss_bytes_are_what_the_task_moves(m: MoEModel, dtype: torch.dtype, nbytes: int) -> None:
    """The loss task's memory-bound kernels (the merge with its fp32 weighted copies, the
    squared error, the combine_bwd send rows) move the recipe's bytes within 10%; the
    recipe of version 1 left out three quarters of them."""
    fn = make_bench("loss", m, 64, "cpu", dtype)
    with KernelBytes() as rec:
        fn()
    mem = lambda r: sum(o.nbytes for o in ops.task_ops("loss", m, 64, grouped=False, bytes_per_elem=nbytes,  # noqa: E731
                                                         recipe=r) if isinstance(o, ops.MemOp))
    assert mem(ops.RECIPE) == pytest.approx(rec.nbytes, rel=0.10)
    assert mem(1) < 0.5 * rec.nbytes


@pytest.mark.parametrize("kind,tol,dtype,nbytes", [("expert_dw", 0.10, torch.float32, 4),
                                                    ("shared_bwd", 0.20, torch.float32, 4),
                                                    ("shared_bwd", 0.20, torch.bfloat16, 2)],
                         ids=["expert_dw-fp32", "shared_bwd-fp32", "shared_bwd-bf16"])
def test_recipe_loop_weight_gradient_bytes_are_what_the_task_moves(kind: str, tol: float, dtype: torch.dtype,
                                                                   nbytes: int) -> None:
    """A loop of GEMMs (fp32 experts, and the shared expert in any dtype) accumulates its
    weight gradients inside the GEMM (``addmm_``): the task's memory-bound kernels move the
    recipe's bytes within ``tol`` (shared_bwd: GELU's backward counted as two passes); the
    recipe of version 2 added an accumulate per GEMM, several times the bytes. (A grouped
    GEMM's add is a real kernel; this counter takes an in-place add as two passes, not three.)"""
    m = _model(d_model=128, ffn_hidden=512, experts=4, expert_kind="gpt", shared_experts=1)
    fn = make_bench(kind, m, 64, "cpu", dtype)
    with KernelBytes() as rec:
        fn()
    mem = lambda r: sum(o.nbytes for o in ops.task_ops(kind, m, 64, grouped=False, bytes_per_elem=nbytes,  # noqa: E731
                                                         recipe=r) if isinstance(o, ops.MemOp))
    assert mem(ops.RECIPE) == pytest.approx(rec.nbytes, rel=tol)
    assert mem(2) > 2 * rec.nbytes


def test_recipe_version_of_a_profile_prices_its_tasks() -> None:
    """A profile's ops.recipe (1 where absent) picks the recipe its tasks are composed with;
    a version this code does not know is one error."""
    from moesched import work
    m = _model(top_k=8, experts=8, shared_experts=0, seq_len=16, micro_batch=4)
    old, new = _profile({"tables": {"bf16": TABLES}}), _profile({"tables": {"bf16": TABLES}, "recipe": ops.RECIPE})
    assert old.ops.recipe == 1 and new.ops.recipe == ops.RECIPE == 3
    assert OpTables.from_dict(new.ops.to_dict()).recipe == 3 and "recipe" not in old.ops.to_dict()
    flops = work.loss_elements(m, 64)
    assert new.compute_us("loss", flops, None, m) > old.compute_us("loss", flops, None, m)
    assert old.compute_us("expert_fwd", 1e9, None, m) == new.compute_us("expert_fwd", 1e9, None, m)
    two = _profile({"tables": {"bf16": TABLES}, "recipe": 2})
    m32 = replace(m, dtype="fp32", shared_experts=1)  # a loop of GEMMs: no adds from recipe 3
    p32 = {r: _profile({"tables": {"fp32": TABLES}, "recipe": r}) for r in (2, 3)}
    assert p32[3].compute_us("expert_dw", 1e9, None, m32) < p32[2].compute_us("expert_dw", 1e9, None, m32)
    assert two.compute_us("expert_dw", 1e9, None, m) == new.compute_us("expert_dw", 1e9, None, m)  # grouped: adds
    for bad in (0, 4, "2", True):
        with pytest.raises(MoeschedError, match="ops.recipe"):
            OpTables.from_dict({"tables": {"bf16": TABLES}, "recipe": bad})


def test_refit_fits_the_operator_corrections_against_the_current_recipe(tmp_path) -> None:
    """``moesched profile --refit P --models CONFIGS`` composes the tasks P timed with the
    current recipe and fits its corrections again (the loss correction no longer makes up
    for the bytes recipe 1 left out); again, it changes nothing; without the models the
    corrections stay as fitted; a timed model that is not given is one error."""
    import subprocess
    import sys
    from pathlib import Path
    from moesched.configs import load_configs
    from moesched.costs.build import refit
    root = Path(__file__).resolve().parents[1]
    src = root / "results/h200x1/passes8/heldout4x-rep/h200x1-one-gpu.json.gz"
    configs = root / "results/h200x1/configs-1gpu-dtypes2.json"
    prof = Profile.load(src)
    assert prof.ops.recipe == 1 and refit(prof).ops == prof.ops
    out = tmp_path / "refit.json"
    r = subprocess.run([sys.executable, "-m", "moesched", "profile", "--refit", str(src), "--models", str(configs),
                        "--out", str(out)], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    new = Profile.load(out)
    assert new.ops.recipe == ops.RECIPE and new.ops.tables == prof.ops.tables and new.ops.insitu == prof.ops.insitu
    assert new.ops.correction["loss"][1] < prof.ops.correction["loss"][1] / 2
    models = [c.model for c in load_configs(configs)]
    assert refit(new, models).ops.correction == new.ops.correction
    with pytest.raises(MoeschedError, match="not among the models given"):
        refit(prof, models[:1])


def test_refit_refuses_bad_outputs_before_any_work(tmp_path, capsys) -> None:
    """--refit never overwrites its --models file, never writes a shipped profile's name into
    the working folder, and does not mix with --check: one line, exit 2, nothing written."""
    from moesched.cli import main
    models = tmp_path / "models.json"
    models.write_text("[]")
    prof = tmp_path / "p.json"
    prof.write_text("{}")
    cases = ((["--refit", str(prof), "--out", str(models), "--models", str(models)], "same file"),
             (["--refit", "cpu-gloo-2"], "names a shipped profile"),
             (["--refit", str(prof), "--check", str(prof)], "not both"))
    for argv, words in cases:
        assert main(["profile", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moesched: error:") and words in err[0], err
    assert models.read_text() == "[]" and prof.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.json", "p.json"]


def test_half_octave_fp32_rows_price_the_held_out_fp32_shape() -> None:
    """On one H200's measured profile with fp32 GEMM rows at half-octave steps, the held-out
    fp32 shape's eight plans re-predict within 7% of their measured steps; with its fp32
    GEMM table cut to the octave-or-coarser grid (m, n, k in 16, 256, 1024, 4096, 16384) and
    the corrections refitted, every one of them comes out more than 8 points faster: that
    grid walks past the wave step of the 1,536-row expert GEMMs."""
    import importlib.util
    import pandas as pd
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("repredict", root / "benchmarks" / "repredict.py")
    rp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rp)
    folder = root / "results/h200x1/passes9/heldout4x-rep"
    fine = rp.repredict(folder, "one-gpu", refit=True)
    cut = rp.repredict(folder, "one-gpu", refit=True, fp32_axes={16, 256, 1024, 4096, 16384})
    fp32 = fine["config"] == "gpt-top1-fp32-4x"
    assert fp32.sum() == 8
    assert fine[fp32]["now_error_pct"].abs().max() < 7
    assert (fine[fp32]["now_error_pct"] - cut[fp32]["now_error_pct"] > 8).all()
    assert pd.Series(cut[~fp32]["now_ms"].values).equals(pd.Series(fine[~fp32]["now_ms"].values))  # bf16 untouched
