"""What several commands resolve from their flags: the model, the profile, the cluster and
its network, checked together once (:func:`moesched.cluster.check_setup`)."""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from moesched.cluster import Cluster, check_setup, comm_model
from moesched.errors import MoeschedError
from moesched.fileio import check_outputs
from moesched.limits import MAX_LAYERS
from moesched.models import MoEModel
from moesched.network import default_network_name, load_network
from moesched.profile import Profile, default_profile_path, freeze_loaded, resolve_profile_path

#: Most layers ``--layers`` accepts (the presets have at most a few dozen).


def profile_path(args: argparse.Namespace) -> Path:
    """The file ``--profile`` names (a path, or a shipped name with or without ``.json``),
    or the default profile."""
    return resolve_profile_path(args.profile) if args.profile is not None else default_profile_path()


def load_profile(args: argparse.Namespace) -> Profile:
    """``--profile`` (a path or a shipped name), or the default profile; it lives for the
    whole command, so it is kept out of the garbage collector's full passes
    (:func:`moesched.profile.freeze_loaded`)."""
    profile = Profile.load(profile_path(args))
    freeze_loaded()
    return profile


def check_command_outputs(args: argparse.Namespace, outputs: dict[str, str | None],
                          inputs: dict[str, str | None] | None = None) -> None:
    """Check the command's output paths before any work (:func:`moesched.fileio.check_outputs`),
    against its ``--profile`` (when it has one), the files its ``--network``, ``--model``
    (a Hugging Face config) and ``--routing`` (a trace) name, and the other ``inputs``."""
    given = dict(inputs or {})
    if hasattr(args, "profile"):
        given["--profile"] = str(profile_path(args))
    for flag in ("network", "model", "routing"):
        value = getattr(args, flag, None)
        if isinstance(value, str) and value and os.path.exists(value):  # False for a name too long
            given[f"--{flag}"] = value
    check_outputs(outputs, given)


def check_time_limit(seconds: float | None) -> None:
    """``--time-limit`` must be a positive, finite number of seconds (or not given)."""
    if seconds is not None and not 0 < seconds < float("inf"):
        raise MoeschedError(f"--time-limit must be positive seconds, got {seconds}")


def resolve(args: argparse.Namespace, any_ep: bool = False) -> tuple[MoEModel, Profile, Cluster]:
    """``--model`` (a preset name, or a Hugging Face ``config.json`` or its folder: seq_len
    4096, micro_batch 1, bf16; with ``--layers`` if the command has it), the profile, and
    ``--cluster`` or, by default, the profile's own layout. ``any_ep``: the command chooses
    the EP size itself when ``--cluster`` has no ``/epN`` (the experts need not divide over
    the whole world)."""
    layers = getattr(args, "layers", None)
    if layers is not None and not 1 <= layers <= MAX_LAYERS:
        raise MoeschedError(f"--layers must be between 1 and {MAX_LAYERS}, got {layers}")
    if args.model.endswith(".json") or _is_dir(args.model):
        model = MoEModel.from_hf_config(args.model)
    else:
        model = MoEModel.from_name(args.model)
    if layers is not None:
        model = model.with_layers(layers)
    profile = load_profile(args)
    cluster = resolve_cluster(args, profile)
    if any_ep and cluster.ep is None:
        comm_model(cluster, profile)
    else:
        _check_default_ep(model, cluster)
        check_setup(model.experts, cluster, profile)
    note = network_note(args, cluster, profile)
    if note:
        print(note)
    return model, profile, cluster


def _check_default_ep(model: MoEModel, cluster: Cluster) -> None:
    """A ``--cluster`` without ``/epN`` runs EP over every rank: when the experts do not
    divide over them, say so with an EP size that does (the largest that divides the experts
    and the world and that divides or is a multiple of the node)."""
    if cluster.ep is not None or model.experts % cluster.world == 0:
        return
    from moesched.solve.layout import ep_candidates  # the solver's import cost on this error path only
    G = cluster.gpus_per_node
    ep = max(d for d in ep_candidates(model, cluster) if d % G == 0 or G % d == 0)
    label = replace(cluster, ep=None).label()
    raise MoeschedError(f"{model.name}'s {model.experts} experts do not divide over the {cluster.world} ranks of "
                        f"{label} (EP over every rank without /epN); give the EP size, e.g. --cluster {label}/ep{ep}, "
                        "or let `moesched solve` choose it")


def _is_dir(path: str) -> bool:
    """Path(path).is_dir(), False for a name the OS refuses (too long, a NUL byte)."""
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def add_cluster_arguments(parser: argparse.ArgumentParser, example: str = "1x4 or 32x8") -> None:
    """``--cluster`` and ``--network``, shared by the commands that plan on a cluster."""
    parser.add_argument("--cluster", default=None,
                        help=f"NODESxGPUS[/epN], e.g. {example} (default: the profile's hardware layout)")
    parser.add_argument("--network", default=None, metavar="PRESET|FILE",
                        help="links of a cluster other than the profiled layout: a preset (`moesched clusters`) "
                             "or a network JSON file (default: the preset matching the profile's GPU)")


def resolve_cluster(args: argparse.Namespace, profile: Profile) -> Cluster:
    """``--cluster`` (default: the profile's layout) with its network: ``--network``, or the
    default preset for the profile's GPU when the cluster is not the profiled layout. The
    profile's own layout keeps its measured per-scope prices (:func:`network_note`)."""
    cluster = Cluster.parse(args.cluster) if args.cluster is not None else Cluster(profile.nodes, profile.gpus_per_node)
    name = getattr(args, "network", None)
    if name is None and cluster.same_layout(profile):
        return cluster
    net = load_network(name if name is not None else default_network_name(str(profile.hardware["gpu"])))
    return replace(cluster, network=net)


def network_note(args: argparse.Namespace, cluster: Cluster, profile: Profile) -> str | None:
    """The line saying which network prices the collectives (None on the profiled layout
    without ``--network``)."""
    if cluster.network is None:
        return None
    if cluster.same_layout(profile):
        return f"network: {cluster.network.name} (not used: on its own layout the profile's measured prices hold)"
    how = "" if getattr(args, "network", None) is not None else \
        f", the default for {profile.hardware['gpu']}; --network to choose"
    return (f"network: {cluster.network.name}{how} (collectives priced by the cluster model, calibrated on "
            f"profile {profile.name})")
