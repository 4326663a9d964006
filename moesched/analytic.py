"""Analytic profiles from the measured ceilings in shared/hardware.md (4 x H200).

They price plans without any profiling run, from the machine's published and measured
ceilings, and are labelled ``kind: analytic`` (the measured profiles are the default). Each
number is derived below from a row of hardware.md; ``python -m moesched.analytic``
regenerates ``profiles/analytic-*.json``.
"""
from __future__ import annotations

from pathlib import Path

from moesched.profile import PROFILES_DIR, Cost, Profile

H200_BYTES = 141 * 10**9


def _line(x0: float, t0: float, x1: float, t1: float) -> Cost:
    """Line through two (bytes, µs) points, alpha clamped at >= 0."""
    beta = (t1 - t0) / (x1 - x0)
    return Cost(max(t0 - beta * x0, 0.0), beta)


MB = 2**20


def _table(points: list[tuple[float, float]]) -> Cost:
    """Interpolated points; outside them, the line through the last two points (alpha at
    least the first point's time)."""
    (x0, t0), (x1, t1) = points[-2], points[-1]
    beta = (t1 - t0) / (x1 - x0)
    return Cost(max(points[0][1] - beta * points[0][0], 0.0), beta, tuple(points))


def _compute() -> dict[str, Cost]:
    # bf16 GEMM ceilings (hardware.md "Compute"): 758-768 TFLOP/s for large products,
    # ~500 TFLOP/s for 512 x 4096 x 14336 (60 GFLOP in 120 µs). A line through those
    # two points: beta = 1/768e12 s/FLOP = 1.30e-9 µs/FLOP, alpha ~ 42 µs; expert
    # tasks are two or three such GEMMs plus an activation. Attention (SDPA, norms,
    # softmax) runs nearer 450 TFLOP/s (assumed, unmeasured).
    gemm = 1e6 / 768e12
    return {
        "attn_fwd": Cost(40.0, 1e6 / 450e12),
        "attn_bwd": Cost(80.0, 1e6 / 400e12),
        "expert_fwd": Cost(42.0, gemm),
        "expert_dx": Cost(42.0, gemm),
        "expert_dw": Cost(42.0, gemm),
        "shared_fwd": Cost(42.0, gemm),
        "shared_bwd": Cost(84.0, gemm),
    }


def nvlink() -> Profile:
    # hardware.md "Collectives over 4 GPUs", NVLink row: all-to-all 64 MB 0.21 ms, 256 MB
    # 0.68 ms; all-reduce 64 MB 0.36 ms, 256 MB 1.22 ms. All-gather and reduce-scatter move
    # half an all-reduce's bytes (ring): assumed half its beta.
    # Interference ("Compute and communication at the same time", NVLink): GEMMs 11.5 ms,
    # all-to-alls 0.82 ms, both 11.8 ms. If compute runs 1/s as fast while comm runs:
    # 11.8 = 11.5 + 0.82 * (1 - 1/s)  ->  s = 1.58.
    # The table's points are kept and interpolated; below 8 MB a 64 KB point of 15 µs
    # (NCCL's small-message latency on NVLink, assumed) keeps small chunks from paying the
    # 73 µs intercept that a line through 64 and 256 MB would charge.
    a2a = _table([(64 * 2**10, 15.0), (8 * MB, 60.0), (64 * MB, 210.0), (256 * MB, 680.0)])
    ar = _table([(64 * 2**10, 15.0), (8 * MB, 80.0), (64 * MB, 360.0), (256 * MB, 1220.0)])
    half = _table([(x, y / 2) for x, y in ar.points])
    return Profile(
        name="analytic-h200x4-nvlink", kind="analytic",
        description="ANALYTIC, not measured: 4 x H200 over NVLink, derived from shared/hardware.md ceilings",
        hardware={"gpu": "NVIDIA H200", "nodes": 1, "gpus_per_node": 4, "gpu_memory_bytes": H200_BYTES,
                  "regime": "nvlink"},
        meta={"source": "shared/hardware.md", "generator": "python -m moesched.analytic"},
        compute=_compute(),
        comm={"all_to_all": {"intra": a2a}, "all_reduce": {"intra": ar},
              "all_gather": {"intra": half}, "reduce_scatter": {"intra": half}},
        compute_slowdown=1.58, comm_slowdown=1.0)


def two_nodes() -> Profile:
    # hardware.md "One host posing as several nodes", 2 x 2 with NCCL_SOCKET_NTHREADS=4
    # NCCL_NSOCKS_PERTHREAD=4, 64 MB: all-reduce inside a node 0.28 ms, across nodes
    # 8.7 ms, all-to-all over all 4 5.4 ms, all-reduce over all 4 5.2 ms. Alphas assumed
    # 30 µs (NVLink) and 100 µs (sockets). Sockets overlap fully (efficiency 1.0 in the
    # interference table): slowdown 1.0 across nodes; inside a node NVLink's 1.58 would
    # apply, but the inter-node link dominates, so 1.1 is assumed.
    def per(t_ms: float, alpha: float) -> Cost:
        return Cost(alpha, (t_ms * 1000 - alpha) / (64 * MB))
    return Profile(
        name="analytic-h200x4-2nodes", kind="analytic",
        description="ANALYTIC, not measured: 4 x H200 as 2 emulated nodes of 2 (NVLink inside, sockets between)",
        hardware={"gpu": "NVIDIA H200", "nodes": 2, "gpus_per_node": 2, "gpu_memory_bytes": H200_BYTES,
                  "regime": "2nodes-sockets"},
        meta={"source": "shared/hardware.md", "generator": "python -m moesched.analytic"},
        compute=_compute(),
        comm={"all_to_all": {"intra": per(0.2, 30.0), "inter": per(5.4, 100.0), "world": per(5.4, 100.0)},
              "all_reduce": {"intra": per(0.28, 30.0), "inter": per(8.7, 100.0), "world": per(5.2, 100.0)}},
        compute_slowdown=1.1, comm_slowdown=1.0)


def main(argv: list[str] | None = None) -> None:
    """Write both analytic profiles into ``--out-dir`` (default: the shipped profiles)."""
    from moesched.cli import _Parser
    ap = _Parser(prog="python -m moesched.analytic", description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(PROFILES_DIR), help="folder for analytic-*.json (default: %(default)s)")
    args = ap.parse_args(argv)
    for p in (nvlink(), two_nodes()):
        path = Path(args.out_dir) / f"{p.name}.json"
        p.save(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
