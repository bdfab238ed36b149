"""The GPU shell scripts under benchmarks/ cannot run here (no CUDA), but must stay valid bash
and call only CLI options that exist."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from elasticrec.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_train_options_exist(script):
    """Every --option a script passes to `elasticrec train` is one the train parser knows."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    known = {o for a in train._actions for o in a.option_strings}
    text = script.read_text()
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z_-]*)", text))
    # options of other commands the scripts call (torchrun, bench, collect_runs, nvidia-smi)
    other = {"--standalone", "--nproc_per_node", "--lengths", "--amp", "--out", "--json", "--md",
             "--query-gpu", "--format", "--models", "--batch-tokens", "--time-limit-s"}
    assert used - other <= known, sorted(used - other - known)
