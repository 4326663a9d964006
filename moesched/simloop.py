"""The simulator's event loops (see :mod:`moesched.sim` for the model): list scheduling of
tasks on serial resources (0 compute, 1 comm_intra, 2 comm_inter) with rate-based
interference. Inputs are the columns of :class:`moesched.sim.Compiled`; times in µs.

``event_loop`` simulates R ranks and the strict (fixed-order) mode: :class:`_Loop` holds its
state and each step (start compute, start collectives, rates, next event, finish compute,
finish collectives, release successors) is one method. ``event_loop_1`` is the same
arithmetic, in the same order, for one rank and list scheduling: the solver's hot path,
with its three resources unrolled into local variables on purpose (the innermost loop of
the search).
"""
from __future__ import annotations

import heapq
from typing import Sequence

from moesched.errors import MoeschedError


#: (host µs [task][rank], issue order, compute tasks each issue waits for, lag µs,
#: setup µs before the first issue, finish µs after the last task)
Host = tuple[list[list[float]], list[int], list[tuple[int, ...]], float, float, float]
#: Remaining work at most EPS x the task's µs (or EPS µs for short tasks) counts as done.
EPS = 1e-9
INF = float("inf")


def event_loop(res: list[int], dur: list[list[float]], succ: Sequence[Sequence[int]], npred: list[int],
                prio: list[float], R: int, inv_c: Sequence[float], inv_m: Sequence[float], strict: bool,
                names: list[str], host: Host | None = None) -> tuple[list[list[float]], list[list[float]], float]:
    """List scheduling with rate-based interference; see the module docstring. Returns
    (start[rank][task], end[rank][task], makespan), µs.

    inv_c[i], inv_m[i] (collective i; unused for compute tasks): the rate of compute while
    collective i runs (1 / its compute slowdown) and the rate of collective i while some
    rank computes (1 / its comm slowdown). With two collectives running, compute goes at
    the lower of their rates.

    host (strict mode only): :data:`Host`, the model of :mod:`moesched.host`; the makespan
    then includes the step's setup and finish."""
    return _Loop(res, dur, succ, npred, prio, R, inv_c, inv_m, strict, names, host).run()


class _Loop:
    """The state of :func:`event_loop` and its steps, each a method (see its docstring).

    Per rank k and task i: ``start[k][i]``, ``end[k][i]`` (µs); ``cnt[k][i]`` (compute) and
    ``cnt_comm[i]`` (collectives, one count for all ranks) the completions still awaited;
    ``run_c[k]``/``rem_c[k]`` the compute task running on rank k and its remaining
    full-speed µs; ``run_l[j]``/``rem_l[j]`` the same for link j (1 intra, 2 inter)."""

    def __init__(self, res: list[int], dur: list[list[float]], succ: Sequence[Sequence[int]], npred: list[int],
                 prio: list[float], R: int, inv_c: Sequence[float], inv_m: Sequence[float], strict: bool,
                 names: list[str], host: Host | None) -> None:
        n = self.n = len(res)
        self.res, self.dur, self.succ, self.prio, self.R = res, dur, succ, prio, R
        self.inv_c, self.inv_m, self.strict, self.names, self.host = inv_c, inv_m, strict, names, host
        self.ranks = range(R)
        self.cnt_comm = [npred[i] if res[i] else 0 for i in range(n)]
        self.cnt = [[0 if res[i] else npred[i] for i in range(n)] for _ in range(R)]
        self.heaps: list[list[list[tuple[float, int]]]] = [[[] for _ in range(3)] for _ in range(R)]  # [rank][res]
        self.ready = [[False] * n for _ in range(R)]  # strict mode; collectives use rank 0's row
        if strict:
            self.seqs = [sorted((i for i in range(n) if res[i] == r), key=lambda i: (prio[i], i)) for r in range(3)]
            self.ptr = [[0, 0, 0] for _ in range(R)]
        for i in range(n):
            if res[i]:
                if self.cnt_comm[i] == 0:
                    self.push(0, i)
            else:
                for k in range(R):
                    if self.cnt[k][i] == 0:
                        self.push(k, i)
        self.start = [[0.0] * n for _ in range(R)]
        self.end = [[0.0] * n for _ in range(R)]
        self.run_c, self.rem_c = [-1] * R, [0.0] * R
        self.run_l, self.rem_l = [-1, -1, -1], [0.0, 0.0, 0.0]
        self.t = 0.0
        self.done = 0
        if host is not None:
            self._init_host(host)

    def _init_host(self, host: Host) -> None:
        """Issue start/end per rank and task (``hs``, ``he``), filled in issue order ahead of
        time as far as the host can go; ``tail[k]``: a compute task whose work is done waits
        for its last launch until then."""
        n, R = self.n, self.R
        self.hcost, self.horder, self.hwait, self.lag, setup, self.finish = host
        self.hs = [[INF] * n for _ in self.ranks]
        self.he = [[INF] * n for _ in self.ranks]
        self.hp, self.hclock = [0] * R, [setup] * R
        self.fin = [[False] * n for _ in self.ranks]
        self.tail = [INF] * R
        for k in self.ranks:
            self.issue(k)

    def push(self, k: int, i: int) -> None:
        """Task i became ready on rank k (rank 0 for collectives)."""
        if self.strict:
            self.ready[k][i] = True
        else:
            heapq.heappush(self.heaps[k][self.res[i]], (self.prio[i], i))

    def issue(self, k: int) -> None:
        """Advance rank k's host through the issue order until a task waits for a GPU end."""
        hp, n, horder, hwait, fin, end = self.hp, self.n, self.horder, self.hwait, self.fin[k], self.end[k]
        while hp[k] < n:
            i = horder[hp[k]]
            h = self.hclock[k]
            for q in hwait[i]:
                if not fin[q]:
                    return
                h = max(h, end[q])
            self.hs[k][i], self.he[k][i] = h, h + self.hcost[i][k]
            self.hclock[k] = self.he[k][i]
            hp[k] += 1

    def start_compute(self, gate: float) -> float:
        """Start a compute task on every idle rank that has one; return the earliest time a
        task held back by the host may start (``gate``, INF if none)."""
        t, host = self.t, self.host
        for k in self.ranks:
            if self.run_c[k] >= 0:
                continue
            if self.strict:
                seq, p = self.seqs[0], self.ptr[k][0]
                if p < len(seq) and self.ready[k][seq[p]]:
                    i = seq[p]
                    if host is not None and self.hs[k][i] + self.lag > t + EPS:
                        gate = min(gate, self.hs[k][i] + self.lag)
                        continue
                    self.ptr[k][0] = p + 1
                    self.run_c[k], self.rem_c[k] = i, self.dur[i][k]
                    self.start[k][i] = t
            elif self.heaps[k][0]:
                i = heapq.heappop(self.heaps[k][0])[1]
                self.run_c[k], self.rem_c[k] = i, self.dur[i][k]
                self.start[k][i] = t
        return gate

    def start_collectives(self, gate: float) -> float:
        """Start a collective on every idle link (all ranks at once); return ``gate`` lowered
        to any collective the host holds back."""
        t = self.t
        for j in (1, 2):
            if self.run_l[j] >= 0:
                continue
            i = -1
            if self.strict:
                seq, p = self.seqs[j], self.ptr[0][j]
                if p < len(seq) and self.ready[0][seq[p]]:
                    i = seq[p]
                    if self.host is not None:
                        g_ = max(self.he[k][i] for k in self.ranks) + self.lag
                        if g_ > t + EPS:
                            gate = min(gate, g_)
                            continue
                    self.ptr[0][j] = p + 1
            elif self.heaps[0][j]:
                i = heapq.heappop(self.heaps[0][j])[1]
            if i >= 0:
                self.run_l[j], self.rem_l[j] = i, max(self.dur[i])
                for k in self.ranks:
                    self.start[k][i] = t
        return gate

    def rates(self, comp_on: bool, comm_on: bool) -> tuple[float, list[float]]:
        """(rate of compute, rate per link [-, intra, inter]) under interference."""
        run_l, inv_c, inv_m = self.run_l, self.inv_c, self.inv_m
        rc = 1.0
        if comm_on:
            rc = inv_c[run_l[1]] if run_l[2] < 0 else inv_c[run_l[2]] if run_l[1] < 0 else \
                min(inv_c[run_l[1]], inv_c[run_l[2]])
        rm = [1.0, inv_m[run_l[1]] if comp_on and run_l[1] >= 0 else 1.0,
              inv_m[run_l[2]] if comp_on and run_l[2] >= 0 else 1.0]
        return rc, rm

    def next_dt(self, gate: float, rc: float, rm: list[float]) -> float:
        """µs to the next event: a task's end, a tail's end or the host's gate."""
        t, host = self.t, self.host
        dt = gate - t
        for k in self.ranks:
            if host is not None and self.tail[k] < INF:
                dt = min(dt, self.tail[k] - t)
            elif self.run_c[k] >= 0 and self.rem_c[k] / rc < dt:
                dt = self.rem_c[k] / rc
        for j in (1, 2):
            if self.run_l[j] >= 0 and self.rem_l[j] / rm[j] < dt:
                dt = self.rem_l[j] / rm[j]
        return dt

    def finish_compute(self, dt: float, rc: float) -> None:
        """Advance every rank's compute task by ``dt`` and retire those done (with the host:
        a task whose work is done ends no earlier than its issue's end + lag)."""
        t, host = self.t, self.host
        for k in self.ranks:
            i = self.run_c[k]
            if i < 0:
                continue
            d = self.dur[i][k]
            if host is not None:
                if self.tail[k] < INF:
                    if t < self.tail[k] - EPS:
                        continue
                    self.tail[k] = INF
                else:
                    self.rem_c[k] -= dt * rc
                    if self.rem_c[k] <= EPS * (d if d > 1.0 else 1.0) and t < self.he[k][i] + self.lag - EPS:
                        self.tail[k], self.rem_c[k] = self.he[k][i] + self.lag, 0.0
                        continue
            else:
                self.rem_c[k] -= dt * rc
            if self.rem_c[k] <= EPS * (d if d > 1.0 else 1.0):
                self.run_c[k] = -1
                self.end[k][i] = t
                self.done += 1
                if host is not None:
                    self.fin[k][i] = True
                    self.issue(k)
                self.release(i, (k,))

    def finish_collectives(self, dt: float, rm: list[float]) -> None:
        """Advance each link's collective by ``dt`` and retire those done (on every rank)."""
        for j in (1, 2):
            i = self.run_l[j]
            if i < 0:
                continue
            self.rem_l[j] -= dt * rm[j]
            d = max(self.dur[i])
            if self.rem_l[j] <= EPS * (d if d > 1.0 else 1.0):
                self.run_l[j] = -1
                self.done += self.R
                for k in self.ranks:
                    self.end[k][i] = self.t
                self.release(i, self.ranks)

    def release(self, i: int, ranks: Sequence[int]) -> None:
        """Task i ended on ``ranks``: count it off its successors there; push those ready."""
        res, cnt_comm, cnt = self.res, self.cnt_comm, self.cnt
        for s in self.succ[i]:
            if res[s]:
                cnt_comm[s] -= 1
                if cnt_comm[s] == 0:
                    self.push(0, s)
            else:
                for k in ranks:
                    cnt[k][s] -= 1
                    if cnt[k][s] == 0:
                        self.push(k, s)

    def run(self) -> tuple[list[list[float]], list[list[float]], float]:
        """Start what can start, advance to the next event, retire what ended; until idle."""
        while True:
            gate = self.start_collectives(self.start_compute(INF))
            comp_on = any(self.run_c[k] >= 0 for k in self.ranks)
            comm_on = self.run_l[1] >= 0 or self.run_l[2] >= 0
            if not comp_on and not comm_on:
                if gate == INF:
                    break
                self.t = gate  # idle until the host has issued the next task
                continue
            rc, rm = self.rates(comp_on, comm_on)
            dt = self.next_dt(gate, rc, rm)
            self.t += dt
            self.finish_compute(dt, rc)
            self.finish_collectives(dt, rm)
        self.check_done()
        return self.start, self.end, self.t if self.host is None else self.t + self.finish

    def check_done(self) -> None:
        """Raise if some task never ran (a strict order against the dependencies)."""
        n, R = self.n, self.R
        if self.done != n * R:
            _deadlock(self.names, [i for i in range(n) if (self.cnt_comm[i] > 0 if self.res[i] else self.cnt[0][i] > 0)],
                      n * R - self.done)


def event_loop_1(res: list[int], dur: list[float], succ: Sequence[Sequence[int]], npred: list[int], prio: list[float],
                  inv_c: Sequence[float], inv_m: Sequence[float], names: list[str]) -> tuple[list[float], list[float], float]:
    """:func:`event_loop` for one rank and ``strict=False``, with the same arithmetic in the
    same order (so the same times to the last bit), without the per-rank lists. Tasks
    enter the heaps by their rank in (priority, index) order, the order the general
    loop's (priority, index) tuples give. Returns (start, end, makespan), µs. The three
    resources are unrolled into local variables on purpose: the search's innermost loop."""
    n = len(res)
    order, pos, heaps, cnt = _ready_heaps_1(res, npred, prio)
    hc, h1, h2 = heaps
    push, pop = heapq.heappush, heapq.heappop
    start = [0.0] * n
    end = [0.0] * n
    run_c = run_1 = run_2 = -1
    rem_c = rem_1 = rem_2 = 0.0
    t = 0.0
    done = 0
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
            i, rem = (run_c, rem_c) if comp_on else (run_1, rem_1) if run_1 >= 0 else (run_2, rem_2)
            t, done = _run_alone_1(i, rem, t, done, res, dur, succ, cnt, order, pos, heaps, start, end)
            run_c = run_1 = run_2 = -1
            continue
        rc = 1.0
        if comm_on:
            rc = inv_c[run_1] if run_2 < 0 else inv_c[run_2] if run_1 < 0 else min(inv_c[run_1], inv_c[run_2])
        rm1 = inv_m[run_1] if comp_on and run_1 >= 0 else 1.0
        rm2 = inv_m[run_2] if comp_on and run_2 >= 0 else 1.0
        dt = INF
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
        _deadlock(names, [i for i in range(n) if cnt[i] > 0], n - done)
    return start, end, t


def _ready_heaps_1(res: list[int], npred: list[int], prio: list[float]
                   ) -> tuple[list[int], list[int], tuple[list[int], list[int], list[int]], list[int]]:
    """(order, pos, heaps, cnt) for :func:`event_loop_1`: tasks by (priority, index), each
    task's rank in that order, one heap of ranks of ready tasks per resource, and the
    completions each task still awaits."""
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
    return order, pos, heaps, cnt


def _run_alone_1(i: int, rem: float, t: float, done: int, res: list[int], dur: list[float],
                 succ: Sequence[Sequence[int]], cnt: list[int], order: list[int], pos: list[int],
                 heaps: tuple[list[int], list[int], list[int]], start: list[float], end: list[float]
                 ) -> tuple[float, int]:
    """Task i runs alone (rates 1.0), so it ends after its remaining ``rem`` µs; chain such
    steps while exactly one resource has ready work. Returns (time, tasks done)."""
    push, pop = heapq.heappush, heapq.heappop
    hc, h1, h2 = heaps
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
            return t, done
        i = order[pop(h)]
        rem = dur[i]
        start[i] = t


def _deadlock(names: list[str], waiting: list[int], missing: int) -> None:
    """Raise the deadlock error: ``missing`` task instances never ran, ``waiting`` some of them."""
    stuck = [names[i] for i in waiting][:3]
    raise MoeschedError(f"schedule deadlocks: {missing} task instances never ran (e.g. {stuck}); "
                        "a strict order must be consistent with the dependencies")
