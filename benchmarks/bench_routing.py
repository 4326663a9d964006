"""Plans under uneven routing (simulation, CPU): the plan solved for a routing distribution
against the solver's even-routing plan under the same steps, and every published policy's
slowdown under imbalance.

    python benchmarks/bench_routing.py [--layers 8] [--samples 8] [--time-limit 20]
        [--presets Mixtral-8x7B,DeepSeek-V2-Lite,GPT2-XL-MoE] [--profile h200x4-nvlink] [--chunk-loads]

Cluster 1 x 4 H200 at EP 4 under ``--profile``. Distributions: every shipped trace
(``routing/*.jsonl``) on each preset with the trace's experts (a trace whose experts no
preset has runs on the first preset with its experts set to the trace's, labelled
``PRESET/E<n>``; ``NAME/dropless``: the preset without its capacity factor), and Zipf
1.0, 1.2, 1.5 (no drift) on every preset; ``--samples`` steps each
(:func:`moesched.imbalance_plans.sampled_loads`). Per case the solver's even plan
(:func:`moesched.solve.solve`) is replayed under the steps, then
:func:`moesched.imbalance_solve.choose` picks the plan with the lowest mean step (the even
plan among its candidates). Table 1: the even plan's even-routing step, both plans' mean
and p90 under the distribution (ms), the gain, the share of copies dropped over capacity
and the chosen plan; table 2: each published policy's mean step under the distribution
over its even-routing step, minus 1 (%). The last line checks that no plan for a
distribution is slower than the even plan. ``--chunk-loads``: per-chunk loads
(:mod:`moesched.imbalance_chunks`). Wall time: about 35 s (50 s with ``--chunk-loads``)
on the 2-core CPU VM.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.commands.models import format_table  # noqa: E402
from moesched.imbalance_plans import sampled_loads  # noqa: E402
from moesched.imbalance_solve import Choice, choose  # noqa: E402
from moesched.models import PRESETS, MoEModel  # noqa: E402
from moesched.plan import from_timeline  # noqa: E402
from moesched.profile import Profile  # noqa: E402
from moesched.solve import solve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ZIPF = ("zipf:1.0", "zipf:1.2", "zipf:1.5")


def preset(name: str, layers: int) -> MoEModel:
    """Preset ``name`` with ``layers`` layers; ``NAME/dropless`` without its capacity factor."""
    base, _, tail = name.partition("/")
    if tail not in ("", "dropless"):
        raise SystemExit(f"bench_routing: {name!r}: only the suffix /dropless is known")
    m = dataclasses.replace(PRESETS[base], layers=layers)
    return dataclasses.replace(m, capacity_factor=None) if tail else m


def cases(presets: list[str], layers: int) -> list[tuple[str, MoEModel, str]]:
    """(model label, model, --routing source) of every shipped trace and Zipf exponent."""
    models = {p: preset(p, layers) for p in presets}
    out = []
    for path in sorted((ROOT / "routing").glob("*.jsonl")):
        experts = json.loads(path.read_text().splitlines()[0])["experts"]
        fits = [(p, m) for p, m in models.items() if m.experts == experts]
        if not fits:
            p = presets[0]
            fits = [(f"{p}/E{experts}", dataclasses.replace(models[p], experts=experts))]
        out += [(label, m, str(path.relative_to(ROOT))) for label, m in fits]
    return out + [(p, m, z) for p, m in models.items() for z in ZIPF]


def run_case(model: MoEModel, source: str, cluster: Cluster, profile: Profile, samples: int,
             time_limit_s: float, chunk_loads: bool = False) -> tuple[Choice, float]:
    """The choice under ``source`` and the wall time it took (s), solve included."""
    t0 = time.perf_counter()
    r = solve(model, cluster, profile, time_limit_s)
    plan = from_timeline("moesched", model, cluster, r.schedule.knobs, r.evaluation.timeline, profile)
    loads = sampled_loads(str(ROOT / source) if source.endswith(".jsonl") else source, model, cluster, samples)
    ch = choose(model, cluster, profile, plan.knobs, list(plan.order), loads, time_limit_s, chunk_loads=chunk_loads)
    return ch, time.perf_counter() - t0


def solver_row(label: str, source: str, ch: Choice, dropped: float, wall_s: float) -> list[str]:
    """Table 1's row of one case (ms)."""
    e, b = ch.even.result, ch.best.result
    return [label, Path(source).name, f"{e.even_us / 1e3:.1f}", f"{e.mean_us / 1e3:.1f}", f"{e.p90_us / 1e3:.1f}",
            f"{b.mean_us / 1e3:.1f}", f"{b.p90_us / 1e3:.1f}", f"{100 * ch.gain:.2f}%", f"{100 * dropped:.1f}%",
            ch.best.name, f"{wall_s:.1f}"]


def dropped_share(model: MoEModel, ch: Choice, ep: int) -> float:
    """Copies dropped over capacity per step / copies routed per step (all layers, EP ranks)."""
    return ch.even.result.dropped / (model.layers * ep * model.tokens * model.top_k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8, help="layers of every preset (default 8)")
    ap.add_argument("--samples", type=int, default=8, help="steps of each distribution (default 8)")
    ap.add_argument("--time-limit", type=float, default=20.0, help="solver time limit per case, s")
    ap.add_argument("--presets", default="Mixtral-8x7B,DeepSeek-V2-Lite,GPT2-XL-MoE",
                    help="comma-separated model presets, NAME/dropless without capacity")
    ap.add_argument("--profile", default="h200x4-nvlink", help="profile name or file")
    ap.add_argument("--chunk-loads", action="store_true", help="per-chunk loads (moesched.imbalance_chunks)")
    args = ap.parse_args(argv)
    profile, cluster = Profile.load(args.profile), Cluster(1, 4, ep=4)
    rows, slow, worst_gain = [], [], 0.0
    names: list[str] = []
    for label, model, source in cases(args.presets.split(","), args.layers):
        ch, wall = run_case(model, source, cluster, profile, args.samples, args.time_limit, args.chunk_loads)
        rows.append(solver_row(label, source, ch, dropped_share(model, ch, 4), wall))
        worst_gain = min(worst_gain, ch.gain)
        pol = {c.name: f"{100 * (c.result.slowdown - 1):+.1f}%" for c in ch.candidates if c.name in ch.policies}
        names += [n for n in pol if n not in names]
        slow.append(([label, Path(source).name], pol))
    loads = "per-chunk" if args.chunk_loads else "per-layer"
    print(f"profile {profile.name}, cluster 1 x 4 at EP 4, {args.layers} layers, {args.samples} sampled steps, "
          f"{loads} loads; step in ms (host model), mean and p90 over the sampled steps")
    print(format_table(["model", "routing", "even plan, even", "even plan mean", "p90", "plan for R mean", "p90",
                        "gain", "dropped", "chosen", "wall s"], rows, [False, False] + [True] * 7 + [False, True]))
    print("\npublished policies: mean step under the distribution / even-routing step - 1")
    print(format_table(["model", "routing"] + names, [head + [p.get(n, "-") for n in names] for head, p in slow],
                       [False, False] + [True] * len(names)))
    ok = worst_gain >= 0
    print(f"\nplan for the distribution never slower than the even plan: {'yes' if ok else 'NO'} "
          f"({len(rows)} cases)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
