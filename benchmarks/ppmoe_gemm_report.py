"""Report of ``benchmarks/gpu_ppmoe.py``: serial against grouped expert GEMMs per preset and
TP size, measured beside the profile's prices (moesched.layoutgraph: grouped = one call of
the task's FLOPs, serial = E/t calls of 1/(E/t) the FLOPs each).

    python benchmarks/ppmoe_gemm_report.py ppmoe_gemms.json [--profile h200x4-nvlink]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.layouts import Layout, attn_fwd_flops, group_tokens  # noqa: E402
from moesched.models import PRESETS  # noqa: E402
from moesched.profile import Profile  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--profile", default="h200x4-nvlink")
    a = ap.parse_args()
    p = Profile.load(a.profile)
    data = json.loads(Path(a.results).read_text())
    recs = data["experts"]
    print(f"{'preset':<18} {'TP':>2} {'experts':>7} {'rows':>6} {'serial_us':>10} {'grouped_us':>10} "
          f"{'serial/grouped':>14} {'pred serial':>11} {'pred grouped':>12}")
    for r in recs:
        m = PRESETS[r["preset"]]
        n, f = r["local_experts"], r["flops"]
        ps = n * p.compute_us("expert_fwd", f / n, m.shape_key(), m, r["tp"])
        pg = p.compute_us("expert_fwd", f, m.shape_key(), m, r["tp"])
        g = r["grouped_us"]
        ratio = f"{r['serial_us'] / g:14.2f}" if g else f"{'-':>14}"
        print(f"{r['preset']:<18} {r['tp']:>2} {n:>7} {r['rows']:>6} {r['serial_us']:>10.1f} "
              f"{(f'{g:.1f}' if g else '-'):>10} {ratio} {ps:>11.1f} {pg:>12.1f}")
    print(f"measured on {recs[0]['device'] if recs else '-'}; predicted: profile {p.name}")
    print(f"\n{'preset':<18} {'TP':>2} {'tokens':>7} {'attn_us':>10} {'x TP / TP1':>10} {'predicted_us':>12}")
    base = {r["preset"]: r for r in data["attention"] if r["tp"] == 1}
    for r in data["attention"]:
        m, t = PRESETS[r["preset"]], r["tp"]
        lay = Layout(t)  # FLOPs are linear in the tokens: scale the group's to the measured
        pred = p.compute_us("attn_fwd", attn_fwd_flops(m, lay) * r["tokens"] / group_tokens(m, lay), m.shape_key(), m, t)
        b0 = base.get(r["preset"])
        scale = f"{r['attn_us'] * t / b0['attn_us'] * b0['tokens'] / r['tokens']:10.2f}" if b0 else f"{'-':>10}"
        print(f"{r['preset']:<18} {t:>2} {r['tokens']:>7} {r['attn_us']:>10.1f} {scale} {pred:>12.1f}")
    print("x TP / TP1: the shard's time x t per token against TP 1 (1.00: time falls as 1/t)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
