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


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_ce_loss_benchmark_writes_its_table(tmp_path):
    """benchmarks/ce_loss.py on tiny shapes: both implementations run and the table is written."""
    import json
    import sys

    out = tmp_path / "ce"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ce_loss.py"), "--out", str(out),
                    "--shapes", "64:50,33:7", "--repeats", "1", "--threads", "1"], check=True,
                   capture_output=True)
    rows = json.loads((out.with_suffix(".json")).read_text())["rows"]
    assert [(r["tokens"], r["items"]) for r in rows] == [(64, 50), (33, 7)]
    assert all("time_s" in r[i] for r in rows for i in ("plain", "chunked", "sampled-batch", "sampled-position",
                                                     "sampled-gather"))
    assert "## Sampled softmax, 128 uniform negatives" in (out.with_suffix(".md")).read_text()
    assert "| 64 x 50 | 64 | 50 |" in (out.with_suffix(".md")).read_text()


def test_amp_cpu_benchmark_writes_its_table(tmp_path):
    """benchmarks/amp_cpu.py on a tiny batch: both models, fp32 and bf16, and the table."""
    import json
    import sys

    out = tmp_path / "amp"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "amp_cpu.py"), "--out", str(out),
                    "--layers", "1", "--threads", "1", "--repeats", "1", "--batch", "2",
                    "--length", "40"], check=True, capture_output=True)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["model"], r["layers"]) for r in rows] == [("elastic", 1), ("sasrec", 1)]
    assert all(r["fp32_s"] > 0 and r["bf16_s"] > 0 for r in rows)
    assert "| elastic | 1 | 1 |" in out.with_suffix(".md").read_text()


def test_op_count_benchmark_writes_its_table(tmp_path):
    """benchmarks/op_count.py counts a training step's ops; ELASTIC issues more than SASRec (the
    reason it is launch-bound on a GPU) and the table is written."""
    import json

    mod = _load_benchmark("op_count")
    assert mod.main(["--models", "elastic,sasrec", "--lengths", "64", "--batch-tokens", "128",
                     "--out", str(tmp_path / "ops")]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "ops.json").read_text())["rows"]}
    assert rows["elastic"]["train_step_ops"] > rows["sasrec"]["train_step_ops"] > rows["sasrec"]["forward_ops"] > 0
    assert "| elastic | 64 | 2 |" in (tmp_path / "ops.md").read_text()


def test_chunk_scan_benchmark_writes_its_table(tmp_path):
    """benchmarks/chunk_scan.py times both scans on one layer; the block matrix issues fewer ops."""

    mod = _load_benchmark("chunk_scan")
    row = mod.measure(L=200, C=8, batch=2, repeats=1)
    assert row["block matrix"][1] < row["log-depth"][1]
    assert mod.main(["--points", "40:8", "--repeats", "1", "--out", str(tmp_path / "scan")]) == 0
    assert "| 40 | 8 | 5 | 102 |" in (tmp_path / "scan.md").read_text()


@pytest.mark.parametrize("runs_file", sorted((ROOT / "benchmarks" / "gpu_runs").glob("*.txt")), ids=lambda p: p.name)
def test_gpu_runs_files_resolve(runs_file):
    """Every line of a RUNS_FILE (gpu_session.sh, phase runs) names a unique run and resolves to a
    valid training config, so a GPU call never dies on a typo."""
    import shlex

    from elasticrec.config import load_config

    names = []
    for line in runs_file.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, *args = shlex.split(line)
        names.append(name)
        opts = dict(zip(args[::2], args[1::2]))
        assert set(args[::2]) <= {"--config", "--set"}, line
        sets = [v for k, v in zip(args[::2], args[1::2]) if k == "--set"]
        load_config(ROOT / opts["--config"], sets)
    assert names and len(names) == len(set(names))


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_chunk_phase_shift_is_the_models_own_output_earlier_in_a_chunk(shift):
    """benchmarks/chunk_phase.py moves the grid by `shift`: the last item's output is then exactly
    what the unshifted model gives that item when `shift` more items follow it (causality and
    end alignment), with a position encoding that does not count from the end."""
    import torch

    from elasticrec.config import ElasticConfig, ModelConfig
    from elasticrec.models import build_model

    mod = _load_benchmark("chunk_phase")
    cfg = ModelConfig(name="elastic", max_len=40, d_model=16, n_layers=2, n_heads=2, dropout=0.0,
                      pos_encoding="none",
                      elastic=ElasticConfig(n_dispatchers=3, chunk_size=4, dispatcher_bias="items",
                                            output_gate=True))
    torch.manual_seed(0)
    model = build_model(cfg, n_items=50).eval()
    items = torch.randint(1, 51, (3, 21))
    items[1, :6] = 0                                     # left padding
    longer = torch.cat([items, torch.randint(1, 51, (3, shift))], dim=1)
    with torch.no_grad():
        expected = model.encode(longer)[:, items.shape[1] - 1]
        mod.shift_grid(model, shift)
        got = model.encode(items)[:, -1]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    if shift:
        with torch.no_grad():
            mod.shift_grid(model, 0)
            assert not torch.allclose(model.encode(items)[:, -1], got)
    with pytest.raises(ValueError, match="shift must be in"):
        mod.shift_grid(model, 4)


@pytest.mark.parametrize("rotary", [False, True])
def test_sink_mass_is_the_weight_the_layer_itself_gives_its_learned_pairs(rotary):
    """benchmarks/sink_mass.py: with every item's value zero and every learned pair's value one,
    the layer's own output at the last position (identity output projection) is exactly the
    weight on the pairs, which the script computes from the logits alone."""
    import torch

    from elasticrec.models.layers.attention import CausalSelfAttention

    mod = _load_benchmark("sink_mass")
    torch.manual_seed(4)
    d, H = 8, 2
    attn = CausalSelfAttention(d, H, null_kv=3, rotary=rotary).eval()
    with torch.no_grad():
        attn.qkv.weight[2 * d:].zero_()                 # item values 0
        attn.qkv.bias[2 * d:].zero_()
        attn.null_k.normal_()
        attn.null_v.fill_(1.0)                          # learned values 1
        attn.out.weight.copy_(torch.eye(d))
        attn.out.bias.zero_()
    x = torch.randn(3, 9, d)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, :5] = False
    for v in (valid, None):
        with torch.no_grad():
            y = attn(x, v)[:, -1].view(3, H, d // H)    # every column of a head = its weight
            mass = mod.last_position_null_mass(attn, x, v)
        torch.testing.assert_close(mass, y[..., 0], atol=1e-6, rtol=1e-5)
        assert ((mass > 0) & (mass < 1)).all()


@pytest.mark.parametrize("opts", [{}, {"local_lookback": True, "dispatcher_bias": "count"}])
def test_sink_mass_reads_elastics_weight_on_its_dispatchers(opts):
    """With every dispatcher value one and every local value zero, each ELASTIC layer's own
    attention output at the last item (identity W_o) is its weight on the dispatchers: the
    script's recorded weights must equal it, layer by layer; for a history inside one chunk that
    is the weight on the learned empty-history entries."""
    import torch

    from elasticrec.config import ElasticConfig, ModelConfig
    from elasticrec.models import build_model

    mod = _load_benchmark("sink_mass")
    D, H = 16, 2
    cfg = ModelConfig(name="elastic", max_len=24, d_model=D, n_layers=2, n_heads=H, dropout=0.0,
                      elastic=ElasticConfig(n_dispatchers=3, chunk_size=4, **opts))
    torch.manual_seed(5)
    model = build_model(cfg, n_items=50).eval()
    outputs = []
    with torch.no_grad():
        for blk in model.blocks:
            a = blk.attn
            a.disp_kv.weight[D:].zero_()
            a.disp_kv.bias[D:].fill_(1.0)
            a.local_kv.weight[D:].zero_()
            a.local_kv.bias[D:].zero_()
            a.out.weight.copy_(torch.eye(D))
            a.out.bias.zero_()
            a.register_forward_hook(lambda m, args, y: outputs.append(y[:, -1].view(-1, H, D // H)[..., 0]))
    items = torch.randint(1, 51, (3, 24))
    items[1, :21] = 0                                   # 3 items: one chunk, only the empty entries
    items[2, :10] = 0
    with torch.no_grad(), mod.Recorder(model) as rec:
        model.encode(items)
        got = rec.take()
    torch.testing.assert_close(got, torch.stack(outputs).mean(-1), atol=1e-5, rtol=1e-5)
    assert got.shape == (2, 3) and ((got > 0) & (got < 1)).all()
    with pytest.raises(ValueError, match="null_kv"):
        mod.Recorder(build_model(ModelConfig(name="sasrec", max_len=8, d_model=8), n_items=10))
