"""Write the notebooks with nbformat and execute them with nbclient (outputs kept).

    python notebooks/make_notebooks.py --all             # every derived file below, then the notebooks
    python notebooks/make_notebooks.py                   # write + execute 01-06
    python notebooks/make_notebooks.py --only 05_layouts # write + execute one
    python notebooks/make_notebooks.py --data sweeps     # re-run both full sweeps -> notebooks/data/
    python notebooks/make_notebooks.py --data predicted  # predicted_<pair>.json from plan_<pair>.json
    python notebooks/make_notebooks.py --data cpu        # CPU plan, predicted + measured traces (torchrun)
    python notebooks/make_notebooks.py --figures         # docs/figures/*.png

The one script for the notebooks, their data and the figures. Derived data (the sweeps,
results/sweeps/ too, and predicted_*.json) comes from the code and the shipped profiles;
tests/test_data_current.py fails when a committed number no longer matches what the code
computes. Measured traces (measured_*.json) are kept as measured. One source per notebook
below, split into cells at ``# %%`` / ``# %% md`` lines. Notebooks read only committed data
in ``notebooks/data`` (no sweeps, no torchrun): all three run in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
CPU_PROFILE = "profiles/cpu-gloo-2.json"

SETUP = """%matplotlib inline
import os, sys
from pathlib import Path
# the repository root: $MOESCHED_ROOT, else the first folder up from here holding moesched/
ROOT = Path(os.environ.get("MOESCHED_ROOT") or next(
    p for p in [Path.cwd(), *Path.cwd().parents] if (p / "moesched" / "__init__.py").exists()))
sys.path.insert(0, str(ROOT))
DATA = ROOT / "notebooks" / "data"
import pandas as pd
from moesched import figures
"""

NB01 = SETUP + """# %% md
# Quickstart: solve a preset and compare with every published schedule

A preset on the shipped default profile: the solver's schedule against the seven published policies.
Shell: `moesched solve --model DeepSeek-V2-Lite --out plan.json --trace predicted.json`,
`moesched plot compare --model DeepSeek-V2-Lite --out compare.png`.
# %%
from moesched import schedules
from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.plan import from_timeline
from moesched.profile import Profile, default_profile_path
from moesched.schedules.base import evaluate, executed_timeline
from moesched.solve.api import solve

PRESET = "DeepSeek-V2-Lite"
model = MoEModel.from_name(PRESET)
profile = Profile.load(default_profile_path())
cluster = Cluster(profile.nodes, profile.gpus_per_node)
note = " (derived from hardware ceilings, NOT measured)" if profile.kind == "analytic" else ""
print(f"profile {profile.name}: {profile.kind}{note}; compute slowdown under comm {profile.compute_slowdown}")
pd.DataFrame([model.to_dict()]).set_index("name")
# %%
res = solve(model, cluster, profile, time_limit_s=60)
k = res.schedule.knobs
print(f"moesched: {res.executed_us / 1e3:.3f} ms (host model); r_fwd={sorted(set(k.r_fwd))} r_bwd={sorted(set(k.r_bwd))} "
      f"at_chunked={k.at_chunked} grad_chunk_bytes={k.grad_chunk_bytes} grad_sync={k.grad_sync} a2a={k.a2a}")
print("priority:", res.schedule.notes.get("priority"), "| found by:", res.schedule.notes.get("source"))
plan = from_timeline("moesched", model, cluster, k, res.evaluation.timeline, profile)  # what `solve --out` writes
print(f"plan: {len(plan.order)} tasks, hash {plan.hash[:12]}, predicted {plan.predicted}")
# %% md
## Every published schedule beside the solver's

Step time everywhere = the host model: each plan as the executor issues it (`moesched simulate` and `solve`
print the same). `speedup_vs_vanilla` = vanilla step / step (> 1: faster). Exposed comm: a collective runs,
compute idles. `gpu_only_step_ms`: list scheduling on GPU costs alone, for reference.
# %%
evals = {n: evaluate(model, cluster, profile, schedules.get(n).schedule(model, cluster, profile))
         for n in schedules.POLICIES}
evals = {"moesched": res.evaluation} | evals
tls = {n: executed_timeline(model, cluster, profile, ev) for n, ev in evals.items()}
table = pd.DataFrame({"step_ms (host model)": {n: tl.makespan_us / 1e3 for n, tl in tls.items()},
                      "exposed_comm_ms": {n: tl.exposed_comm_us() / 1e3 for n, tl in tls.items()},
                      "gpu_only_step_ms": {n: ev.step_us / 1e3 for n, ev in evals.items()}})
table["speedup_vs_vanilla"] = table.loc["vanilla", "step_ms (host model)"] / table["step_ms (host model)"]
table.rename_axis("policy").round(3)
# %%
steps = {n: tl.makespan_us for n, tl in tls.items() if n != "moesched"} | {"moesched": tls["moesched"].makespan_us}
figures.policy_bar_figure(steps, f"{PRESET} on {cluster.label()}: predicted step, host model ({profile.name})");
# %% md
## The plan's timeline

Rank 0 of the predicted step (host model): one row per serial resource, bars coloured by task kind,
exposed communication in red; vanilla (no overlap) below for reference.
# %%
figures.timeline_figure({"moesched (solved)": tls["moesched"], "vanilla": tls["vanilla"]},
                        f"{PRESET} on {cluster.label()}, predicted");
"""

NB02 = SETUP + """# %% md
# Predicted and measured timelines

Each pair `predicted_<name>.json` / `measured_<name>.json` in `notebooks/data/` (GPU first): the simulated
and the executed timeline of one plan (`plan_<name>.json`), rank 0, exposed communication in red. The measured
traces are GPU runs on 4 x H200 in the regime their name gives, each kept as measured; the predicted ones are
the committed plan replayed on today's shipped profile of that regime with the host model
(`make_notebooks.py --data predicted`), so a pair shows how well the current model predicts that run. The CPU
pair (`make_notebooks.py --data cpu`, gloo on 2 processes, noisy) checks the pipeline, not GPU overlap.
# %%
from moesched.trace import read_chrome_trace

names = lambda prefix: {p.stem[len(prefix) + 1:] for p in DATA.glob(f"{prefix}_*.json")}  # noqa: E731
PAIRS = sorted(names("predicted") & names("measured"), key=lambda n: ("cpu" in n.lower(), n))
pairs = {n: {"predicted": read_chrome_trace(DATA / f"predicted_{n}.json"),
             "measured": read_chrome_trace(DATA / f"measured_{n}.json")} for n in PAIRS}
# step_ms: the traced step; median_step_ms: the executor's median over all timed steps
rows = [{"pair": n, "timeline": lab, "step_ms": tl.makespan_us / 1e3, "median_step_ms": tl.meta.get("median_step_us",
         tl.makespan_us) / 1e3, "exposed_comm_ms": tl.exposed_comm_us() / 1e3,
         **{f"{r}_busy_ms": v / 1e3 for r, v in tl.busy_us().items()}}
        for n, two in pairs.items() for lab, tl in two.items()]
print("pairs:", PAIRS or "none found")
pd.DataFrame(rows).set_index(["pair", "timeline"]).round(3) if rows else None
# %%
for n, two in pairs.items():
    err = 100 * (two["predicted"].makespan_us / two["measured"].makespan_us - 1)
    figures.timeline_figure(two, f"{n}: predicted vs measured (step prediction error {err:+.0f}%)")
# %% md
## Interference: how communication stretches compute

`compute_slowdown`: how many times longer compute takes while a collective runs. The same plan, simulated
in its strict issue order (as the executor replays it), with the factor at 1.0 and at the profile's value.
# %%
from moesched.graph import build
from moesched.plan import Plan
from moesched.profile import Profile, default_profile_path
from moesched.sim import simulate

plan_file = next((DATA / f"plan_{n}.json" for n in PAIRS if (DATA / f"plan_{n}.json").exists()), None)
assert plan_file, "no notebooks/data/plan_<name>.json: run `python notebooks/make_notebooks.py --data cpu`"
plan = Plan.load(plan_file)
where = [DATA / f"{plan.profile['name']}.json", ROOT / "profiles" / f"{plan.profile['name']}.json"]
profile = Profile.load(next((p for p in where if p.exists()), default_profile_path()))
model, cluster = plan.model, plan.cluster
factor = profile.compute_slowdown
if factor <= 1.0:
    factor = Profile.load(default_profile_path()).compute_slowdown
    print(f"profile {profile.name} measured no slowdown; illustrating with {factor} (default profile's factor)")
g = build(model, cluster, profile, plan.knobs)
prio = {t: i for i, t in enumerate(plan.order)}
runs = {f"compute_slowdown={s:.3g}": simulate(g, prio, strict=True, compute_slowdown=s) for s in (1.0, factor)}
cmp = pd.concat({lab: figures.compute_durations(tl) for lab, tl in runs.items()}, axis=1)
cmp.loc["step (makespan)"] = [tl.makespan_us / 1e3 for tl in runs.values()]
print(f"{model.name} ({model.layers} layers) on {cluster.label()}, profile {profile.name}; rank 0, ms")
cmp.round(3)
# %%
figures.interference_figure(runs, f"{model.name} on {cluster.label()}: compute stretched by overlapping collectives")
figures.timeline_figure(runs, f"{model.name} on {cluster.label()}: same plan and order");
"""

NB03 = SETUP + """# %% md
# The published layer grids: where moesched wins

ScheMoE's 675 and FSMoE's 1458 layers, each solved and compared with every published policy on the default
profile (`notebooks/data/sweep_*.csv`; `sweeps.json` says how, and whether the whole grid ran).
Every step is the host model's (each plan as the executor issues it); speedup over a policy = its step /
moesched's step (> 1: moesched faster; `speedup_vanilla` is `speedup_vs_vanilla`).
# %%
import json
from moesched.solve import grids
prov = json.loads((DATA / "sweeps.json").read_text())
sweeps = {g: figures.sweep_frame(DATA / f"sweep_{g}.csv") for g in ("schemoe675", "fsmoe1458")}
sweeps["fsmoe1458"]["H/M"] = sweeps["fsmoe1458"]["H"] // sweeps["fsmoe1458"]["M"]
for g, df in sweeps.items():
    p = prov[g]
    extent = "the FULL grid" if p["limit"] is None else f"ONLY the first {p['limit']} entries (--limit)"
    print(f"{g}: {len(df)} of {len(grids.grid(g, 4))} layers; ran {extent} in {p['seconds']} s on {p['cpus']} CPUs, "
          f"profile {p['profile']}\\n  $ {p['command']}")
# %%
summary = pd.DataFrame({(g, s): df[f"speedup_{s}"].describe(percentiles=[0.1, 0.5, 0.9])
                        for g, df in sweeps.items() for s in ("vanilla", "best")}).T
summary.index.names = ["grid", "speedup over"]
for g, df in sweeps.items():
    print(f"{g}: moesched beats the best published policy by >1% on {100 * (df['speedup_best'] > 1.01).mean():.0f}% "
          "of layers; answers by source:", df["source"].str.split(":").str[0].value_counts().to_dict())
summary.round(3)
# %%
for g, df in sweeps.items():
    figures.speedup_figure(df, f"moesched speedup, {g} grid ({prov[g]['profile']})")
# %% md
## Which published policy is best where

The best published policy per layer, overall and by model width M.
# %%
display(pd.DataFrame({g: df["best_published"].value_counts() for g, df in sweeps.items()}).fillna(0).astype(int))
for g, df in sweeps.items():
    figures.wins_figure(df, f"{g}: best published policy by M", by="M")
# %% md
## How the chosen knobs vary with shape

Mean pipeline degree (fwd, bwd), median gradient chunk per (M, H) cell (FSMoE: H/M); "one bucket" = unchunked.
# %%
figures.knob_heatmap_figure(sweeps["schemoe675"], ["r_fwd_max", "r_bwd_max"], "schemoe675: chosen degrees", agg="mean")
figures.knob_heatmap_figure(sweeps["schemoe675"], ["grad_chunk_bytes"], "schemoe675: gradient chunk")
figures.knob_heatmap_figure(sweeps["fsmoe1458"], ["r_fwd_max", "r_bwd_max"], "fsmoe1458: chosen degrees",
                            y="H/M", agg="mean");
"""

NB05 = SETUP + """# %% md
# Layouts: EP (all-to-all) against PPMoE (EP inside tensor parallelism)

One preset on one node of the shipped 4 x H200 profile, at ZeRO-1: the solver's EP layout and schedule
against Pipeline MoE's layouts (TP2, TP4, with and without sequence parallelism), each as the plan
`moesched layouts --out plan.json` would write, replayed as the executor runs it (docs/layouts.md).
Shell: `moesched layouts --model LLaMA2-MoE --profile h200x4-nvlink --cluster 1x4 --zero 1 --out plan.json`.
# %%
from moesched.cluster import Cluster
from moesched.layoutchoice import compare_layouts, reason
from moesched.models import PRESETS
from moesched.profile import Profile
model, profile = PRESETS["LLaMA2-MoE"], Profile.load("h200x4-nvlink")
opts, chosen = compare_layouts(model, Cluster(1, 4), profile, zero=1, time_limit_s=2.0)
rows = {o.label(): {"TP": o.layout.tp, "memory GB/rank": o.memory.total_bytes / 1e9 if o.memory else None,
                    "step ms": o.step_us / 1e3 if o.step_us else None,
                    **{f"{k} ms": v / 1e3 for k, v in o.busy_us.items()},
                    "priority": o.plan.predicted.get("priority") if o.plan else None} for o in opts}
print("why:", reason(opts, chosen))
pd.DataFrame(rows).T.round(2)
# %% md
## Predicted timelines of rank 0

Each layout's plan replayed in its order (strict: each stream in plan order). EP: compute overlaps the
all-to-alls; PPMoE: no all-to-all, a TP all-reduce (or reduce-scatter + all-gather) after attention and
after the experts, and the DP gradient all-reduces of the E/t local experts.
# %%
runs = {o.label(): o.plan.replay(profile) for o in opts if o.plan is not None and o.layout.sequence_parallel is False}
figures.timeline_figure(runs, f"{model.name} on 1x4: EP against PPMoE", share_x=True);
# %% md
## Pipeline stages: the bubble

The same preset in 4 pipeline stages of 8 layers (each stage one copy of the 1 x 4 node, the EP layout
inside it), 4 micro-batches in the 1F1B order: each stage's forward and backward time per micro-batch
from the model's graph, the stage-to-stage sends priced on the network's NICs, the pipeline simulated
(`moesched layouts --model LLaMA2-MoE --pp 4 --microbatches 4`). The gaps on each stage's row are
the bubble.
# %%
import matplotlib.pyplot as plt
from moesched.pipeline import bubble_fraction, pipeline_graph
from moesched.pipelineplan import check_pipeline, p2p_us, stage_times_us
from moesched.sim import simulate
pp, mb = 4, 4
m1 = check_pipeline(model, pp, mb)                     # one micro-batch of the batch
fwd, bwd = stage_times_us(m1, Cluster(1, 4), profile, pp)
g, prio = pipeline_graph(pp, mb, fwd, bwd, p2p_us(m1, Cluster(1, 4), profile), "1f1b")
comp = simulate(g, prio).df.query("resource == 'compute'")
step_ms = comp.end_us.max() / 1e3
fig, ax = plt.subplots(figsize=(14, 2.6), layout="constrained")
for r in comp.itertuples():
    s, w = int(r.role[len("stage"):]), (r.end_us - r.start_us) / 1e3
    ax.barh(s, w, left=r.start_us / 1e3, color="tab:blue" if r.kind == "stage_fwd" else "tab:orange",
            edgecolor="white")
    ax.text(r.start_us / 1e3 + w / 2, s, r.task[0] + str(r.chunk), ha="center", va="center", fontsize=8)
ax.set_yticks(range(pp), [f"stage {s}" for s in range(pp)])
ax.invert_yaxis()
ax.set_xlabel("ms")
ax.set_title(f"{model.name}: {pp} stages x {mb} micro-batches, 1F1B (F forward, B backward)")
idle = 1 - mb * (sum(fwd) + sum(bwd)) / 1e3 / (pp * step_ms)
print(f"step {step_ms:.1f} ms; idle share {100 * idle:.1f}% against (S-1)/(m+S-1) = "
      f"{100 * bubble_fraction(pp, mb):.1f}% for equal stages")
"""

sys.path.insert(0, str(HERE))
from nb_inference import NB06_BODY  # noqa: E402  notebooks/nb_inference.py
from nb_routing import NB04_BODY  # noqa: E402  notebooks/nb_routing.py

NOTEBOOKS = {"01_quickstart": NB01, "02_timelines": NB02, "03_layer_grids": NB03,
             "04_routing_placement": SETUP + NB04_BODY, "05_layouts": NB05,
             "06_inference": SETUP + NB06_BODY}


def split_cells(text: str) -> list[tuple[str, str]]:
    """(kind, source) cells of a text split at ``# %%`` (code) / ``# %% md`` lines."""
    parts = re.split(r"^# %%( md)?\n", text, flags=re.M)
    cells = [(None, parts[0])] + list(zip(parts[1::2], parts[2::2]))
    return [("md" if k else "code", src.strip()) for k, src in cells if src.strip()]


def build(name: str):
    """The notebook ``name`` (without outputs)."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    nb = new_notebook()
    nb.cells = [new_markdown_cell(s) if k == "md" else new_code_cell(s) for k, s in split_cells(NOTEBOOKS[name])]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def write_notebooks(run: bool, only: list[str] | None = None) -> None:
    """Build each notebook, execute it in a fresh python3 kernel (raises on a cell error), write it."""
    import nbformat
    from nbclient import NotebookClient
    from moesched.fileio import write_atomic
    os.environ.setdefault("MOESCHED_ROOT", str(ROOT))
    for name in only or NOTEBOOKS:
        nb, t0 = build(name), time.perf_counter()
        if run:
            NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,  # stable files
                           resources={"metadata": {"path": str(HERE)}}).execute()
        write_atomic(HERE / f"{name}.ipynb", nbformat.writes(nb) + "\n")
        print(f"wrote notebooks/{name}.ipynb" + (f", executed in {time.perf_counter() - t0:.1f} s" if run else ""))


def sh(*cmd: str, stdout=None) -> float:
    """Run ``python -m CMD...`` in the repo root (PYTHONPATH = root); seconds taken."""
    print("+ python -m", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, env=env, check=True, stdout=stdout)
    return time.perf_counter() - t0


#: Regimes of the shipped measured profiles (results/sweeps/<grid>-<regime>.csv).
REGIMES = ("nvlink", "hostmem", "2nodes")
GRIDS = ("schemoe675", "fsmoe1458")


def data_sweeps() -> None:
    """Both full sweeps on the default profile (notebooks/data, with ``sweeps.json``, the
    provenance notebook 03 prints) and on each shipped measured profile (results/sweeps/,
    with the summary ``moesched sweep`` prints as .txt)."""
    from moesched.profile import default_profile_path
    prov, profile = {}, default_profile_path().name
    for grid in GRIDS:
        cmd = ("moesched", "sweep", "--grid", grid, "--out", f"notebooks/data/sweep_{grid}.csv")
        prov[grid] = {"command": "python -m " + " ".join(cmd), "profile": profile, "step": "host model",
                      "limit": None, "seconds": round(sh(*cmd), 1), "cpus": os.cpu_count()}
    (DATA / "sweeps.json").write_text(json.dumps(prov, indent=1) + "\n")
    for grid in GRIDS:
        for regime in REGIMES:
            out = f"results/sweeps/{grid}-{regime}"  # relative to ROOT, where sh runs
            cmd = ("moesched", "sweep", "--grid", grid, "--profile", f"h200x4-{regime}", "--out", f"{out}.csv")
            with open(ROOT / f"{out}.txt", "w") as f:
                f.write(f"$ python -m {' '.join(cmd)}\n")
                f.flush()
                sh(*cmd, stdout=f)


def predicted_pairs() -> list[str]:
    """Names of the committed plan_<name>.json that have a measured_<name>.json beside them."""
    return sorted(p.stem[len("plan_"):] for p in DATA.glob("plan_*.json")
                  if (DATA / f"measured_{p.stem[len('plan_'):]}.json").exists())


def predicted_timeline(name: str):
    """The committed plan of pair ``name`` replayed as the executor runs it (host model) on
    today's shipped profile of the plan's profile name."""
    from moesched.plan import Plan
    from moesched.profile import Profile
    plan = Plan.load(DATA / f"plan_{name}.json")
    return plan.replay(Profile.load(plan.profile["name"]))


def data_predicted() -> None:
    """predicted_<name>.json for every committed plan with a measured trace."""
    from moesched.trace import write_chrome_trace
    for name in predicted_pairs():
        write_chrome_trace(predicted_timeline(name), DATA / f"predicted_{name}.json", label="predicted")
        print(f"wrote notebooks/data/predicted_{name}.json")


def data_cpu() -> None:
    """Plan + predicted trace of a tiny model on the CPU profile; measured trace on 2 gloo ranks."""
    if not (ROOT / CPU_PROFILE).exists():
        raise SystemExit(f"no 2-rank CPU profile {CPU_PROFILE}; measure one first")
    sh("moesched", "solve", "--model", "GPT2-Tiny-MoE", "--layers", "2", "--profile", CPU_PROFILE,  # tiny for CPU
       "--out", "notebooks/data/plan_cpu.json", "--trace", "notebooks/data/predicted_cpu.json")
    sh("torch.distributed.run", "--nproc_per_node=2", "-m", "executor.run", "--plan", "notebooks/data/plan_cpu.json",
       "--steps", "5", "--trace", "notebooks/data/measured_cpu.json")


def figures() -> None:
    """README pictures (small PNGs) from the committed data and the default profile."""
    from moesched.profile import Profile, default_profile_path
    prof = Profile.load(default_profile_path()).name
    for p in sorted(DATA.glob("measured_*.json")):
        name = p.stem.split("_", 1)[1]
        if (DATA / f"predicted_{name}.json").exists():
            sh("moesched", "plot", "timeline", "--trace", f"notebooks/data/predicted_{name}.json", "--trace",
               f"notebooks/data/{p.name}", "--title", f"{name}: predicted vs measured",
               "--out", f"docs/figures/timeline_{name}.png")
    with tempfile.TemporaryDirectory() as t:
        sh("moesched", "solve", "--model", "Mixtral-7B-FSMoE", "--out", f"{t}/p.json", "--trace", f"{t}/moesched.json")
        sh("moesched", "simulate", "--model", "Mixtral-7B-FSMoE", "--schedules", "vanilla", "--trace",
           f"{t}/vanilla.json")
        sh("moesched", "plot", "timeline", "--trace", f"{t}/moesched.json", "--trace", f"{t}/vanilla.json", "--title",
           f"Mixtral-7B-FSMoE ({prof} profile): moesched vs vanilla",
           "--out", "docs/figures/timeline_best_vs_vanilla.png")
    sh("moesched", "plot", "compare", "--model", "DeepSeek-V2-Lite", "--out", "docs/figures/compare_policies.png")
    for grid in ("schemoe675", "fsmoe1458"):
        sh("moesched", "plot", "sweep", "--csv", f"notebooks/data/sweep_{grid}.csv", "--title",
           f"moesched speedup on the {grid} grid ({prof} profile, host model)", "--out", f"docs/figures/sweep_{grid}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    ap.add_argument("--data", choices=("sweeps", "predicted", "cpu"), action="append", default=[],
                    help="regenerate data first")
    ap.add_argument("--figures", action="store_true", help="write docs/figures/*.png instead of notebooks")
    ap.add_argument("--only", choices=sorted(NOTEBOOKS), action="append", help="write only this notebook")
    ap.add_argument("--all", action="store_true", help="sweeps, predicted traces, figures, then the notebooks")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    for d in (["sweeps", "predicted"] if a.all else a.data):
        {"sweeps": data_sweeps, "predicted": data_predicted, "cpu": data_cpu}[d]()
    if a.figures or a.all:
        figures()
    if not a.figures or a.all:
        write_notebooks(not a.no_execute, a.only)


if __name__ == "__main__":
    main()
