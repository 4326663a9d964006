"""Offline oracle of a host model (session 3): re-predict the issue A/B runs with the host
launch times *measured* in their traces as a serial host resource in plan order (dispatch
also waits for its attention task on the GPU), against the simulator as is.

    PYTHONPATH=. python scripts/host_replay.py   # reads results/gpu/session3/traces-ab.tgz
"""
import tarfile
import tempfile
import pandas as pd
from pathlib import Path
from moesched.trace import read_chrome_trace
from moesched.profile import Profile
from moesched.cluster import Cluster
from moesched.plan import Plan
from moesched.graph import build, COMPUTE
from moesched.sim import simulate
from moesched.configs import load_configs
from executor.validate import make_plan
CFG = {c.name: c.model for c in load_configs('docs/validation_configs.json')}
TR = tempfile.mkdtemp()
with tarfile.open('results/gpu/session3/traces-ab.tgz') as t:
    t.extractall(TR, filter='data')
def run(reg, cfg, sch, mode='single', hostsrc='same'):
    path=f'profiles/h200x4-{reg}.json'; p=Profile.load(path)
    plan=Plan.from_dict(make_plan((path, CFG[cfg].to_dict(), Cluster(p.nodes,p.gpus_per_node).to_dict(), sch)))
    g=build(plan.model, plan.cluster, p, plan.knobs)
    tag='' if mode=='threads' else '_single'
    m=read_chrome_trace(f'{TR}/traces/{reg}_{cfg}_{sch}{tag}_measured.json')
    host=m.host.set_index('task'); hd=(host.end_us-host.start_us).to_dict()
    meas=m.df.end_us.max()
    pred0=simulate(g,{t:i for i,t in enumerate(plan.order)},strict=True).makespan_us
    # host replay
    he={}; ge={}; hprev=0.0; cprev=0.0; lprev={}
    for t in plan.order:
        a=g.nodes[t]; preds=list(g.predecessors(t)); h=hd[t]
        hs=hprev
        if a['kind']=='dispatch':
            hs=max([hs]+[ge[q] for q in preds if g.nodes[q]['resource']==COMPUTE])
        hend=hs+h; hprev=hend
        d=a['duration_us']
        if a['resource']==COMPUTE:
            s=max([cprev,hs]+[ge[q] for q in preds]); e=max(s+d, hend); cprev=e
        else:
            r=a['resource']; s=max([lprev.get(r,0.0),hend]+[ge[q] for q in preds]); e=s+d; lprev[r]=e
        ge[t]=e
    return meas/1e3, pred0/1e3, max(ge.values())/1e3, sum(hd.values())/1e3
rows=[]
for reg in ['nvlink','hostmem','2nodes']:
    for cfg in ['gpt2xl-4L','mixtral-2L','deepseek-4L']:
        for sch in ['vanilla','pipemoe','fsmoe','flowmoe','moesched']:
            rows.append((reg,cfg,sch)+tuple(round(x,1) for x in run(reg,cfg,sch)))
df=pd.DataFrame(rows,columns=['reg','cfg','sch','meas','pred_sim','pred_host','host_sum'])
df['err_sim']=((df.pred_sim-df.meas)/df.meas*100).round(1); df['err_host']=((df.pred_host-df.meas)/df.meas*100).round(1)
pd.set_option('display.width',200)
print(df.to_string())
print(df.groupby('reg')[['err_sim','err_host']].apply(lambda x: x.abs().mean()))
