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
def test_cli_options_exist(script):
    """Every --option a script passes is one that `elasticrec train` or `elasticrec bench` knows."""
    commands = build_parser()._subparsers._group_actions[0].choices
    bench = commands["bench"]._subparsers._group_actions[0].choices
    parsers = [commands["train"], bench["accuracy"], bench["efficiency"]]
    known = {o for p in parsers for a in p._actions for o in a.option_strings}
    text = script.read_text()
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z_-]*)", text))
    # options of other programs the scripts call (torchrun, collect_runs, nvidia-smi, tar)
    other = {"--standalone", "--nproc_per_node", "--json", "--query-gpu", "--format", "--exclude"}
    assert used - other <= known, sorted(used - other - known)
