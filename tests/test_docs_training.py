"""The training program of docs/executing.md ("Inside a training loop") runs as written:
extracted from the page and run under torchrun on 2 CPU processes, its loss falls."""
from __future__ import annotations

import re
import subprocess
import sys

from localhost import free_port
from test_executor_exact import ROOT, env


def snippet() -> str:
    text = (ROOT / "docs" / "executing.md").read_text()
    section = text.split("## Inside a training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_training_program_runs_as_written(tmp_path):
    prog = tmp_path / "train.py"
    prog.write_text(snippet())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", str(prog)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    losses = [float(x) for x in re.findall(r"^step \d+ loss ([0-9.]+)$", r.stdout, re.M)]
    assert len(losses) == 20, r.stdout
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
