"""What several commands resolve from their flags: the model, the profile and the cluster."""
from __future__ import annotations

import argparse

from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.profile import Profile, default_profile_path


def load_profile(args: argparse.Namespace) -> Profile:
    """``--profile`` (a path or a shipped name), or the default profile."""
    return Profile.load(args.profile if args.profile is not None else default_profile_path())


def resolve(args: argparse.Namespace) -> tuple[MoEModel, Profile, Cluster]:
    """``--model`` (with ``--layers`` if the command has it), the profile, and ``--cluster``
    or, by default, the profile's own layout."""
    layers = getattr(args, "layers", None)
    model = MoEModel.from_name(args.model, **({"layers": layers} if layers is not None else {}))
    profile = load_profile(args)
    cluster = Cluster.parse(args.cluster) if args.cluster else Cluster(profile.nodes, profile.gpus_per_node)
    return model, profile, cluster
