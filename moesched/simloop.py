"""The simulator's event loops (see :mod:`moesched.sim` for the model): list scheduling of
tasks on serial resources (0 compute, 1 comm_intra, 2 comm_inter) with rate-based
interference. Inputs are the columns of :class:`moesched.sim.Compiled`; times in µs.

``event_loop`` simulates R ranks and the strict (fixed-order) mode; ``event_loop_1`` is the
same arithmetic, in the same order, for one rank and list scheduling: the solver's hot path,
with its three resources unrolled into local variables on purpose (the innermost loop of the search).
"""
from __future__ import annotations

import heapq
from typing import Sequence

from moesched.errors import MoeschedError


#: (host µs [task][rank], issue order, compute tasks each issue waits for, lag µs,
#: setup µs before the first issue, finish µs after the last task)
Host = tuple[list[list[float]], list[int], list[tuple[int, ...]], float, float, float]


def event_loop(res: list[int], dur: list[list[float]], succ: Sequence[Sequence[int]], npred: list[int],
                prio: list[float], R: int, inv_c: Sequence[float], inv_m: Sequence[float], strict: bool,
                names: list[str], host: Host | None = None) -> tuple[list[list[float]], list[list[float]], float]:
    """List scheduling with rate-based interference; see the module docstring.

    inv_c[i], inv_m[i] (collective i; unused for compute tasks): the rate of compute while
    collective i runs (1 / its compute slowdown) and the rate of collective i while some
    rank computes (1 / its comm slowdown). With two collectives running, compute goes at
    the lower of their rates.

    host (strict mode only): :data:`Host`, the model of :mod:`moesched.host`; the makespan
    then includes the step's setup and finish."""
    n = len(res)
    cnt_comm = [npred[i] if res[i] else 0 for i in range(n)]
    cnt = [[0 if res[i] else npred[i] for i in range(n)] for _ in range(R)]
    heaps: list[list[list[tuple[float, int]]]] = [[[] for _ in range(3)] for _ in range(R)]  # [rank][res]
    ready = [[False] * n for _ in range(R)]  # strict mode; collectives use rank 0's row
    if strict:
        seqs = [sorted((i for i in range(n) if res[i] == r), key=lambda i: (prio[i], i)) for r in range(3)]
        ptr = [[0, 0, 0] for _ in range(R)]

    def push(k: int, i: int) -> None:
        if strict:
            ready[k][i] = True
        else:
            heapq.heappush(heaps[k][res[i]], (prio[i], i))

    for i in range(n):
        if res[i]:
            if cnt_comm[i] == 0:
                push(0, i)
        else:
            for k in range(R):
                if cnt[k][i] == 0:
                    push(k, i)
    start = [[0.0] * n for _ in range(R)]
    end = [[0.0] * n for _ in range(R)]
    run_c = [-1] * R
    rem_c = [0.0] * R
    run_l = [-1, -1, -1]
    rem_l = [0.0, 0.0, 0.0]
    t = 0.0
    done = 0
    EPS = 1e-9
    ranks = range(R)
    INF = float("inf")
    if host is not None:  # issue start/end per rank and task, filled in issue order ahead of time
        hcost, horder, hwait, lag, setup, finish = host
        hs = [[INF] * n for _ in ranks]
        he = [[INF] * n for _ in ranks]
        hp, hclock = [0] * R, [setup] * R
        fin = [[False] * n for _ in ranks]
        tail = [INF] * R  # a compute task whose work is done waits for its last launch until tail[k]

        def issue(k: int) -> None:
            while hp[k] < n:
                i = horder[hp[k]]
                h = hclock[k]
                for q in hwait[i]:
                    if not fin[k][q]:
                        return
                    h = max(h, end[k][q])
                hs[k][i], he[k][i] = h, h + hcost[i][k]
                hclock[k] = he[k][i]
                hp[k] += 1

        for k in ranks:
            issue(k)
    while True:
        gate = INF  # earliest time a task held back by the host may start
        for k in ranks:  # start compute tasks
            if run_c[k] < 0:
                if strict:
                    seq, p = seqs[0], ptr[k][0]
                    if p < len(seq) and ready[k][seq[p]]:
                        i = seq[p]
                        if host is not None and hs[k][i] + lag > t + EPS:
                            gate = min(gate, hs[k][i] + lag)
                            continue
                        ptr[k][0] = p + 1
                        run_c[k], rem_c[k] = i, dur[i][k]
                        start[k][i] = t
                elif heaps[k][0]:
                    i = heapq.heappop(heaps[k][0])[1]
                    run_c[k], rem_c[k] = i, dur[i][k]
                    start[k][i] = t
        for j in (1, 2):  # start collectives (one per link, all ranks at once)
            if run_l[j] < 0:
                i = -1
                if strict:
                    seq, p = seqs[j], ptr[0][j]
                    if p < len(seq) and ready[0][seq[p]]:
                        i = seq[p]
                        if host is not None:
                            g_ = max(he[k][i] for k in ranks) + lag
                            if g_ > t + EPS:
                                gate = min(gate, g_)
                                continue
                        ptr[0][j] = p + 1
                elif heaps[0][j]:
                    i = heapq.heappop(heaps[0][j])[1]
                if i >= 0:
                    run_l[j], rem_l[j] = i, max(dur[i])
                    for k in ranks:
                        start[k][i] = t
        comp_on = False
        for k in ranks:
            if run_c[k] >= 0:
                comp_on = True
                break
        comm_on = run_l[1] >= 0 or run_l[2] >= 0
        if not comp_on and not comm_on:
            if gate == INF:
                break
            t = gate  # idle until the host has issued the next task
            continue
        rc = 1.0
        if comm_on:
            rc = inv_c[run_l[1]] if run_l[2] < 0 else inv_c[run_l[2]] if run_l[1] < 0 else \
                min(inv_c[run_l[1]], inv_c[run_l[2]])
        rm = [1.0, inv_m[run_l[1]] if comp_on and run_l[1] >= 0 else 1.0,
              inv_m[run_l[2]] if comp_on and run_l[2] >= 0 else 1.0]
        dt = gate - t
        for k in ranks:
            if host is not None and tail[k] < INF:
                dt = min(dt, tail[k] - t)
            elif run_c[k] >= 0 and rem_c[k] / rc < dt:
                dt = rem_c[k] / rc
        for j in (1, 2):
            if run_l[j] >= 0 and rem_l[j] / rm[j] < dt:
                dt = rem_l[j] / rm[j]
        t += dt
        for k in ranks:  # finish compute tasks
            i = run_c[k]
            if i < 0:
                continue
            d = dur[i][k]
            if host is not None:
                if tail[k] < INF:
                    if t < tail[k] - EPS:
                        continue
                    tail[k] = INF
                else:
                    rem_c[k] -= dt * rc
                    if rem_c[k] <= EPS * (d if d > 1.0 else 1.0) and t < he[k][i] + lag - EPS:
                        tail[k], rem_c[k] = he[k][i] + lag, 0.0
                        continue
            else:
                rem_c[k] -= dt * rc
            if rem_c[k] <= EPS * (d if d > 1.0 else 1.0):
                run_c[k] = -1
                end[k][i] = t
                done += 1
                if host is not None:
                    fin[k][i] = True
                    issue(k)
                for s in succ[i]:
                    if res[s]:
                        cnt_comm[s] -= 1
                        if cnt_comm[s] == 0:
                            push(0, s)
                    else:
                        cnt[k][s] -= 1
                        if cnt[k][s] == 0:
                            push(k, s)
        for j in (1, 2):  # finish collectives
            i = run_l[j]
            if i < 0:
                continue
            rem_l[j] -= dt * rm[j]
            d = max(dur[i])
            if rem_l[j] <= EPS * (d if d > 1.0 else 1.0):
                run_l[j] = -1
                done += R
                for k in ranks:
                    end[k][i] = t
                for s in succ[i]:
                    if res[s]:
                        cnt_comm[s] -= 1
                        if cnt_comm[s] == 0:
                            push(0, s)
                    else:
                        for k in ranks:
                            cnt[k][s] -= 1
                            if cnt[k][s] == 0:
                                push(k, s)
    if done != n * R:
        stuck = [names[i] for i in range(n) if (cnt_comm[i] > 0 if res[i] else cnt[0][i] > 0)][:3]
        raise MoeschedError(f"schedule deadlocks: {n * R - done} task instances never ran (e.g. {stuck}); "
                            "a strict order must be consistent with the dependencies")
    return start, end, t if host is None else t + finish


def event_loop_1(res: list[int], dur: list[float], succ: Sequence[Sequence[int]], npred: list[int], prio: list[float],
                  inv_c: Sequence[float], inv_m: Sequence[float], names: list[str]) -> tuple[list[float], list[float], float]:
    """:func:`event_loop` for one rank and ``strict=False``, with the same arithmetic in the
    same order (so the same times to the last bit), without the per-rank lists. Tasks
    enter the heaps by their rank in (priority, index) order, the order the general
    loop's (priority, index) tuples give. Returns (start, end, makespan), µs."""
    n = len(res)
    order = sorted(range(n), key=prio.__getitem__)  # stable: ties by index
    pos = [0] * n
    for r, i in enumerate(order):
        pos[i] = r
    cnt = list(npred)
    heaps: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i in range(n):
        if cnt[i] == 0:
            heaps[res[i]].append(pos[i])
    for h in heaps:
        heapq.heapify(h)
    hc, h1, h2 = heaps
    push, pop = heapq.heappush, heapq.heappop
    start = [0.0] * n
    end = [0.0] * n
    run_c = run_1 = run_2 = -1
    rem_c = rem_1 = rem_2 = 0.0
    t = 0.0
    done = 0
    EPS = 1e-9
    inf = float("inf")
    while True:
        if run_c < 0 and hc:
            run_c = order[pop(hc)]
            rem_c = dur[run_c]
            start[run_c] = t
        if run_1 < 0 and h1:
            run_1 = order[pop(h1)]
            rem_1 = dur[run_1]
            start[run_1] = t
        if run_2 < 0 and h2:
            run_2 = order[pop(h2)]
            rem_2 = dur[run_2]
            start[run_2] = t
        comp_on = run_c >= 0
        comm_on = run_1 >= 0 or run_2 >= 0
        if not comp_on and not comm_on:
            break
        if comp_on + (run_1 >= 0) + (run_2 >= 0) == 1:
            # One task runs alone, so both rates are 1.0 and it ends after its remaining µs
            # (dt = rem / 1.0 below). Chain such steps while exactly one resource has work.
            i, rem = (run_c, rem_c) if comp_on else (run_1, rem_1) if run_1 >= 0 else (run_2, rem_2)
            while True:
                t += rem
                end[i] = t
                done += 1
                for s in succ[i]:
                    cnt[s] -= 1
                    if cnt[s] == 0:
                        push(heaps[res[s]], pos[s])
                if hc and not h1 and not h2:
                    h = hc
                elif h1 and not hc and not h2:
                    h = h1
                elif h2 and not hc and not h1:
                    h = h2
                else:
                    break
                i = order[pop(h)]
                rem = dur[i]
                start[i] = t
            run_c = run_1 = run_2 = -1
            continue
        rc = 1.0
        if comm_on:
            rc = inv_c[run_1] if run_2 < 0 else inv_c[run_2] if run_1 < 0 else min(inv_c[run_1], inv_c[run_2])
        rm1 = inv_m[run_1] if comp_on and run_1 >= 0 else 1.0
        rm2 = inv_m[run_2] if comp_on and run_2 >= 0 else 1.0
        dt = inf
        if comp_on and rem_c / rc < dt:
            dt = rem_c / rc
        if run_1 >= 0 and rem_1 / rm1 < dt:
            dt = rem_1 / rm1
        if run_2 >= 0 and rem_2 / rm2 < dt:
            dt = rem_2 / rm2
        t += dt
        fin = []
        if comp_on:
            rem_c -= dt * rc
            d = dur[run_c]
            if rem_c <= EPS * (d if d > 1.0 else 1.0):
                fin.append(run_c)
                run_c = -1
        if run_1 >= 0:
            rem_1 -= dt * rm1
            d = dur[run_1]
            if rem_1 <= EPS * (d if d > 1.0 else 1.0):
                fin.append(run_1)
                run_1 = -1
        if run_2 >= 0:
            rem_2 -= dt * rm2
            d = dur[run_2]
            if rem_2 <= EPS * (d if d > 1.0 else 1.0):
                fin.append(run_2)
                run_2 = -1
        for i in fin:
            end[i] = t
            done += 1
            for s in succ[i]:
                cnt[s] -= 1
                if cnt[s] == 0:
                    push(heaps[res[s]], pos[s])
    if done != n:
        stuck = [names[i] for i in range(n) if cnt[i] > 0][:3]
        raise MoeschedError(f"schedule deadlocks: {n - done} task instances never ran (e.g. {stuck}); "
                            "a strict order must be consistent with the dependencies")
    return start, end, t
