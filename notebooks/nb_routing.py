"""Source of notebook 04 (routing skew and expert placement), split into cells at ``# %%``
lines by notebooks/make_notebooks.py. Reads only committed traces (routing/) and the
shipped profile: runs in seconds."""

NB04_BODY = """# %% md
# Routing skew and expert placement

Routing traces recorded from real training (`routing/`, made by `routing/make_traces.sh` on CPU
and `benchmarks/gpu_traces.sh` on one H200) and what each expert-placement policy makes of them.
Shell: `moesched routing show TRACE --png skew.png`,
`moesched placement --model GPT2-XL-MoE --routing TRACE --png placement.png`.
# %%
from moesched import routing_trace
from moesched.routing_stats import layer_skew, skew_figure

TRACES = ["bytelm-L2-E4-top2", "bytelm-L4-E8-top2", "h200-bytelm-L4-E16-topk", "h200-bytelm-L4-E16-dsv3"]
traces = {n: routing_trace.load(ROOT / "routing" / f"{n}.jsonl") for n in TRACES}
pd.DataFrame([dict(trace=n, router=t.header.router, experts=t.header.experts, layer=s.layer,
                   mean=round(s.mean, 3), p90=round(s.p90, 3), worst=round(s.worst, 3),
                   first=round(s.first, 3), last=round(s.last, 3), top_changes=f"{s.top_changes:.0%}")
              for n, t in traces.items() for s in layer_skew(t)]).set_index(["trace", "layer"])
# %% md
## Skew over the steps

Max/mean expert load per step and layer (1.0 = even; 8.0 = two experts of 16 take every copy).
Top-k softmax without a balancing loss collapses onto two experts in the deeper layers;
DeepSeek-V3's bias update starts from the same collapse and evens three layers out.
# %%
skew_figure(traces["h200-bytelm-L4-E16-topk"], "top-k softmax, no balancing loss (1 x H200)");
skew_figure(traces["h200-bytelm-L4-E16-dsv3"], "DeepSeek-V3 router, aux-loss-free bias (1 x H200)");
# %% md
## Placement policies on a recorded trace

GPT2-XL-MoE (16 experts) on 1 x 4 H200 (EP 4, one extra slot per rank), the first 300 steps of
the DeepSeek-V3-routed trace, decisions every 25 steps; a migration moves parameters and Adam
state at the profile's intra-node link bandwidth plus the fixed cost of the expert-state copy
measured on one H200. Dots: steps where a policy moved experts.
# %%
from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.placement_cost import PlacementCost
from moesched.placement_figure import replay_figure
from moesched.placement_policies import PolicyConfig
from moesched.placement_replay import POLICIES, replay
from moesched.placement_trace import trace_loads
from moesched.profile import Profile

def table(res, ideal):
    return pd.DataFrame([dict(policy=r.policy, total_s=round(r.total_us / 1e6, 2),
                              mean_step_ms=round(r.mean_step_us / 1e3, 2),
                              balance=round(sum(r.balance) / len(r.balance), 3),
                              of_ideal=f"{ideal.total_us / r.total_us:.1%}", migrations=r.migrations,
                              dropped=int(r.dropped)) for r in list(res.values()) + [ideal]]).set_index("policy")

profile = Profile.load("h200x4-nvlink")
model = MoEModel.from_name("GPT2-XL-MoE")
cost = PlacementCost(model, Cluster(1, 4), profile)
loads, label = trace_loads(str(ROOT / "routing" / "h200-bytelm-L4-E16-dsv3.jsonl"), model, cost.ranks)
res, ideal = replay(loads[:300], cost, model.experts // cost.ranks + 1, list(POLICIES), PolicyConfig(interval=25))
replay_figure(res, "GPT2-XL-MoE on 1x4, DeepSeek-V3-routed trace");
table(res, ideal)
# %% md
## Placement policies on the 8-expert trace

Mixtral-7B-FSMoE (8 experts, 7 MoE layers) on 1 x 4 with one extra slot per rank, the whole
400-step top-2 trace: moesched regroups the experts in the first decisions and rarely after;
EPLB re-packs at every decision and pays its replicas' gradient all-reduces every step.
# %%
model = MoEModel.from_name("Mixtral-7B-FSMoE")
cost = PlacementCost(model, Cluster(1, 4), profile)
loads, label = trace_loads(str(ROOT / "routing" / "bytelm-L4-E8-top2.jsonl"), cost.model, cost.ranks)
res, ideal = replay(loads, cost, model.experts // cost.ranks + 1, list(POLICIES), PolicyConfig(interval=25))
replay_figure(res, "Mixtral-7B-FSMoE on 1x4, 8-expert top-2 trace");
table(res, ideal)
# %% md
## Drifting Zipf loads on a larger expert count

DeepSeek-V2-Lite (64 experts) on 1 x 4, drifting Zipf s = 1.0, 100 steps, its 26 MoE layers placed
(`cost.model`; the dense first layer costs the same under every placement): here the experts'
compute dominates and replicas pay for themselves.
# %%
from moesched.placement_replay import zipf_loads

model = MoEModel.from_name("DeepSeek-V2-Lite")
cost = PlacementCost(model, Cluster(1, 4), profile)
loads = zipf_loads(model.experts, cost.model.layers, 100, cost.sent_copies * cost.ranks, 1.0, seed=0,
                   drift_steps=200, top_k=model.top_k)
res, ideal = replay(loads, cost, model.experts // cost.ranks + 1, list(POLICIES), PolicyConfig(interval=25))
replay_figure(res, "DeepSeek-V2-Lite on 1x4, drifting Zipf 1.0");
table(res, ideal)
"""
