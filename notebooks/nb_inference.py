"""Source of notebook 06 (DEP inference: FinDEP against PPPipe), split into cells at ``# %%``
lines by notebooks/make_notebooks.py. Reads only the shipped profile: runs in seconds."""

NB06_BODY = """# %% md
# Inference: disaggregated attention and experts (DEP), FinDEP against PPPipe

A forward pass (prefill) of DeepSeek-V2-Lite, 4 of its layers, on 2 attention GPUs (attention and the
shared experts) and 2 expert GPUs (32 routed experts each), task times priced by the shipped
`h200x4-nvlink` profile (`moesched/findep_profile.py`), transfers as its all-to-all. Every policy at the
memory bound r1 m_a <= M_max (docs/inference.md). Shell:
`moesched solve --mode inference --model DeepSeek-V2-Lite --layers 4 --ag 2 --eg 2 --out dep.json`.
# %%
from dataclasses import replace
from moesched.findep import dep_model, memory_bound, throughput_tokens_s
from moesched.findep_figure import dep_timeline_figure
from moesched.findep_profile import profile_times
from moesched.findep_solve import algorithm1, naive_dep, own_search, pppipe, schedule_of
from moesched.memory import gpu_memory_bytes
from moesched.models import PRESETS
from moesched.profile import Profile

AG, EG = 2, 2
model, profile = replace(PRESETS["DeepSeek-V2-Lite"], layers=4), Profile.load("h200x4-nvlink")
dm = dep_model(model)
m_max = memory_bound(dm, AG, gpu_memory_bytes(profile.hardware))
times = profile_times(model, profile, AG, EG)
findep = algorithm1(dm, times, AG, m_max)
res = {"moesched": own_search(dm, times, AG, m_max, findep), "findep": findep,
       "pppipe": pppipe(dm, times, AG, m_max), "naive-dep": naive_dep(dm, times, AG, m_max)}
scheds = {n: schedule_of(times, dm.layers, r) for n, r in res.items()}
print(f"M_max = {m_max} samples per attention GPU; Algorithm 1 solved in {findep.solve_s:.2f} s")
pd.DataFrame([{"policy": n, "tokens/s": round(throughput_tokens_s(dm, AG, r.config, r.makespan_ms)),
               "forward ms": round(r.makespan_ms, 2), "exposed transfers ms": round(scheds[n].exposed_comm_ms(), 2),
               "m_a": r.config.m_a, "r1": r.config.r1, "r2": r.config.r2,
               "order": "searched" if r.ag_order else r.config.order} for n, r in res.items()]).set_index("policy")
# %% md
## The two groups side by side

Each panel: the attention group (attention in dark blue, shared experts in light blue), the A2E link, the
expert group and the E2A link on one time axis; in red the time a transfer runs while both groups idle.
PPPipe sends a micro-batch to the experts only after its shared expert and does not cut it into chunks
(r2 = 1): the expert group waits for whole micro-batches, and the last micro-batch's A2E, experts and E2A
run after the attention group has finished, with nothing left to hide the transfers behind. FinDEP sends
each of r2 chunks as soon as attention ends (before the shared expert) and overlaps the transfers with the
experts and the next attention. Naive DEP (one micro-batch, no chunks) exposes every transfer.
# %%
LABELS = {"findep": "FinDEP", "pppipe": "PPPipe", "naive-dep": "naive DEP"}
dep_timeline_figure({f"{LABELS[n]} (m_a={r.config.m_a}, r1={r.config.r1}, r2={r.config.r2})": scheds[n]
                     for n, r in res.items() if n in LABELS},
                    f"{model.name} ({dm.layers} layers, S = {dm.seq_len}) on (ag, eg) = ({AG}, {EG}), {profile.name}");
# %% md
## A readable close-up: at most 8 samples per attention GPU

The same model with the memory bound cut to 8 samples (fewer, shorter tasks).
# %%
small = {n: f(dm, times, AG, 8) for n, f in (("FinDEP", algorithm1), ("PPPipe", pppipe))}
dep_timeline_figure({f"{n} (m_a={r.config.m_a}, r1={r.config.r1}, r2={r.config.r2})": schedule_of(times, dm.layers, r)
                     for n, r in small.items()}, f"{model.name}, M_max = 8");
# %% md
## On the paper's cost model

DeepSeek-V2 as FinDEP models it (8 layers, S = 4096) with the paper's fitted lines of testbed A at
(ag, eg) = (2, 6) (its Fig. 7; `benchmarks/findep_paper.py`): attention dominates, so both policies are
bound by the attention group and FinDEP's gain is the exposed transfers PPPipe leaves at each layer's end.
# %%
from moesched.findep import PAPER_COSTS, PAPER_MODELS
from moesched.findep_solve import paper_times
pm = PAPER_MODELS["DeepSeek-V2"]
pt = paper_times(pm, PAPER_COSTS[(2, 6)], 2, 6)
pmax = memory_bound(pm, 2, 48e9)
paper = {n: f(pm, pt, 2, pmax) for n, f in (("FinDEP", algorithm1), ("PPPipe", pppipe))}
dep_timeline_figure({f"{n} (m_a={r.config.m_a}, r1={r.config.r1}, r2={r.config.r2})": schedule_of(pt, pm.layers, r)
                     for n, r in paper.items()}, "DeepSeek-V2 on the paper's cost model, testbed A, (2, 6)");
"""
