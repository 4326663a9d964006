"""Configuration sets (:mod:`moesched.configs`): names that name files, models with names."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesched.configs import load_configs
from moesched.errors import MoeschedError
from moesched.models import MoEModel

TINY = MoEModel.from_name("GPT2-Tiny-MoE").to_dict()


def _write(tmp_path: Path, entries: list) -> Path:
    p = tmp_path / "configs.json"
    p.write_text(json.dumps(entries))
    return p


@pytest.mark.parametrize("name", [[], None, 5, "", "../../x/y", "a/b", " lead", "x" * 101])
def test_config_names_that_cannot_name_a_file_are_refused(tmp_path: Path, name: object) -> None:
    with pytest.raises(MoeschedError, match="name .* must be 1-100 letters"):
        load_configs(_write(tmp_path, [{"name": name, "model": TINY}]))


def test_good_names_load(tmp_path: Path) -> None:
    cs = load_configs(_write(tmp_path, [{"name": "gpt-top1_4x.v2+b", "model": TINY}, {"name": "B", "model": TINY}]))
    assert [c.name for c in cs] == ["gpt-top1_4x.v2+b", "B"] and cs[0].model == MoEModel.from_dict(TINY)


@pytest.mark.parametrize("name", [[], None, 5, ""])
def test_a_model_name_must_be_a_string(tmp_path: Path, name: object) -> None:
    with pytest.raises(MoeschedError, match="model name must be a non-empty string"):
        MoEModel.from_dict({**TINY, "name": name})
