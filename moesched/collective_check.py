"""The held-out check of the cluster model on a multi-node profile.

The tiers are calibrated on the profile's ``intra`` and ``inter`` points alone
(:func:`moesched.collectives.calibrate`); the model then prices the profile's ``world``
points, which it never saw. Calculon's ``validate`` in spirit: the relative error of each
point, the mean and max per collective and over all.

Where the profile keeps each measuring pass's median (``meta.comm_pass_us``, from
``moesched profile --comm-passes``), each point also gets its *floor*: how far, on average,
one pass's median lies from the point's median, %. A model can be no more accurate
against a point than the point is repeatable.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from moesched.collectives import OPS, calibrate, profile_groups
from moesched.errors import MoeschedError
from moesched.network import Network, default_network_name, load_network
from moesched.profile import Profile


#: The scopes the check needs: calibrated on the first two, checked on the third.
SCOPES = frozenset({"intra", "inter", "world"})


def _several_nodes_of_several_gpus(profile: Profile) -> bool:
    return profile.nodes >= 2 and profile.gpus_per_node >= 2


@dataclass(frozen=True)
class HeldOutPoint:
    """One whole-world collective point: ``nbytes`` per rank (the profile's x), the
    measured median and the model's price (µs), and each pass's median (µs; empty when
    the profile does not keep them)."""

    op: str
    nbytes: float
    measured_us: float
    predicted_us: float
    pass_us: tuple[float, ...] = ()

    @property
    def err(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_us - self.measured_us) / self.measured_us

    @property
    def floor(self) -> float | None:
        """Mean |pass median - median| / median; None without pass medians."""
        if not self.pass_us:
            return None
        return statistics.fmean(abs(p - self.measured_us) for p in self.pass_us) / self.measured_us


def held_out_world_points(profile: Profile, network: Network) -> list[HeldOutPoint]:
    """Every whole-world point of ``profile``, priced by tiers calibrated on its intra- and
    inter-node points only. Raises MoeschedError unless the profile spans several nodes of
    several GPUs and measured all three scopes."""
    if not _several_nodes_of_several_gpus(profile):
        raise MoeschedError(f"profile {profile.name} is {profile.nodes}x{profile.gpus_per_node}: the held-out "
                            "check needs several nodes of several GPUs")
    model = calibrate(profile, network, profile.gpus_per_node, scopes=("intra", "inter"))
    world = profile_groups(profile)["world"]
    passes = profile.meta.get("comm_pass_us") or {}
    points = []
    for op in OPS:
        by = profile.comm.get(op, {})
        if not SCOPES <= set(by):
            raise MoeschedError(f"profile {profile.name} lacks the intra, inter and world points of {op}")
        for x, t in by["world"].points:
            meds = tuple(float(v) for v in passes.get(f"{op}.world@{int(x)}", ()))
            points.append(HeldOutPoint(op, x, t, model.us(op, world, x), meds))
    return points


def summary_lines(points: list[HeldOutPoint]) -> list[str]:
    """Mean and max |error| per collective and over all, %, with the mean floor where known."""
    lines = []
    for op in [*OPS, None]:
        sel = [p for p in points if op in (None, p.op)]
        if not sel:
            continue
        errs = [abs(p.err) for p in sel]
        floors = [p.floor for p in sel if p.floor is not None]
        floor = f", floor {100 * statistics.fmean(floors):.1f}%" if floors else ""
        lines.append(f"{op or 'all':<15} {len(sel):3d} points: mean {100 * statistics.fmean(errs):5.1f}%, "
                     f"max {100 * max(errs):5.1f}%{floor}")
    return lines


def check_lines(profile: Profile) -> list[str]:
    """The lines ``moesched profile --check`` adds for a profile of several nodes of several
    GPUs with all three scopes: the held-out check, on the default network of the profile's
    GPU (which gives only the hops' latencies; the tiers come from the profile). Else none."""
    scopes = [set(by) for by in profile.comm.values()]
    if not _several_nodes_of_several_gpus(profile) or not scopes or not all(SCOPES <= s for s in scopes):
        return []
    gpu = str(profile.hardware.get("gpu", ""))
    try:
        name = default_network_name(gpu)
    except MoeschedError:
        return [f"cluster model on the whole-world points: not checked (no network preset is made for {gpu!r})"]
    try:
        points = held_out_world_points(profile, load_network(name))
    except MoeschedError as e:  # a profile that cannot calibrate the model: the rest of the report stands
        return [f"cluster model on the whole-world points: not checked ({e})"]
    return [f"cluster model: the whole-world collectives predicted from the intra- and inter-node points "
            f"(held out; hop latencies of network {name}):", *(f"  {line}" for line in summary_lines(points))]
