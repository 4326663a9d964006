"""What several commands resolve from their flags: the model, the profile and the cluster."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.fileio import check_outputs
from moesched.models import MoEModel
from moesched.profile import Profile, default_profile_path, resolve_profile_path

#: Most layers ``--layers`` accepts (the presets have at most a few dozen).
MAX_LAYERS = 1024


def profile_path(args: argparse.Namespace) -> Path:
    """The file ``--profile`` names (a path, or a shipped name with or without ``.json``),
    or the default profile."""
    return resolve_profile_path(args.profile) if args.profile is not None else default_profile_path()


def load_profile(args: argparse.Namespace) -> Profile:
    """``--profile`` (a path or a shipped name), or the default profile."""
    return Profile.load(profile_path(args))


def check_command_outputs(args: argparse.Namespace, outputs: dict[str, str | None],
                          inputs: dict[str, str | None] | None = None) -> None:
    """Check the command's output paths before any work (:func:`moesched.fileio.check_outputs`),
    against its ``--profile`` (when it has one) and the other ``inputs``."""
    given = dict(inputs or {})
    if hasattr(args, "profile"):
        given["--profile"] = str(profile_path(args))
    check_outputs(outputs, given)


def check_time_limit(seconds: float | None) -> None:
    """``--time-limit`` must be a positive, finite number of seconds (or not given)."""
    if seconds is not None and not 0 < seconds < float("inf"):
        raise MoeschedError(f"--time-limit must be positive seconds, got {seconds}")


def resolve(args: argparse.Namespace) -> tuple[MoEModel, Profile, Cluster]:
    """``--model`` (a preset name, or a Hugging Face ``config.json`` or its folder: seq_len
    4096, micro_batch 1, bf16; with ``--layers`` if the command has it), the profile, and
    ``--cluster`` or, by default, the profile's own layout."""
    layers = getattr(args, "layers", None)
    if layers is not None and not 1 <= layers <= MAX_LAYERS:
        raise MoeschedError(f"--layers must be between 1 and {MAX_LAYERS}, got {layers}")
    over = {"layers": layers} if layers is not None else {}
    if args.model.endswith(".json") or Path(args.model).is_dir():
        model = replace(MoEModel.from_hf_config(args.model), **over)
    else:
        model = MoEModel.from_name(args.model, **over)
    profile = load_profile(args)
    cluster = Cluster.parse(args.cluster) if args.cluster else Cluster(profile.nodes, profile.gpus_per_node)
    return model, profile, cluster
