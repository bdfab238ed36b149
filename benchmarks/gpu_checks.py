"""Quick CUDA checks against the CPU: every model's forward (fp32 and bf16 autocast), one
training step with the trainer's optimizer (fused AdamW on the GPU), and SASRec's padded
attention running inside FlashAttention (no L x L mask)."""

import copy

import torch

from elasticrec.config import ElasticConfig, ExperimentConfig, ModelConfig
from elasticrec.models import build_model
from elasticrec.train.losses import next_item_loss
from elasticrec.train.trainer import build_optimizer

assert torch.cuda.is_available(), "no CUDA device"
x = torch.randint(1, 5001, (4, 1000))
x[1, :300] = 0
v = (x > 0)[..., None]
for name in ("sasrec", "elastic", "hstu", "linrec"):
    cfg = ModelConfig(name=name, max_len=1000, d_model=64, n_layers=2, n_heads=2, dropout=0.0,
                      elastic=ElasticConfig(n_dispatchers=16, chunk_size=64, memory=True))
    torch.manual_seed(0)
    m = build_model(cfg, 5000).eval()
    with torch.no_grad():
        ref = m.encode(x)
        mc = copy.deepcopy(m).cuda()
        out32 = mc.encode(x.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out16 = mc.encode(x.cuda()).float().cpu()
    e32 = ((out32 - ref) * v).abs().max().item()
    e16 = ((out16 - ref) * v).abs().max().item() / ref.abs().max().item()
    print(f"{name}: cuda fp32 max abs err {e32:.2e}, bf16 max rel err {e16:.2e}")
    assert e32 < 1e-3 and e16 < 5e-2, name

    # one training step, CPU (for-loop AdamW) against GPU (fused AdamW), fp32: the updates agree
    ecfg = ExperimentConfig(model=cfg)
    y = torch.roll(x, -1, 1) * (x > 0)
    before = torch.cat([p.detach().flatten() for p in m.parameters()])
    for mm in (m, mc):
        mm.train()
        opt = build_optimizer(mm, ecfg)
        dev = next(mm.parameters()).device
        next_item_loss(mm, mm.encode(x.to(dev)), y.to(dev), ecfg.train).backward()
        opt.step()
    assert opt.defaults.get("fused"), "the GPU optimizer is not the fused AdamW"
    d_cpu = torch.cat([p.detach().flatten() for p in m.parameters()]) - before
    d_gpu = torch.cat([p.detach().cpu().flatten() for p in mc.parameters()]) - before
    cos = torch.nn.functional.cosine_similarity(d_cpu, d_gpu, dim=0).item()
    print(f"{name}: one AdamW step, cuda (fused) vs cpu update cosine {cos:.5f}")
    assert cos > 0.99, name

# SASRec with left padding must run inside FlashAttention (bf16): no [B, 1, L, L] mask
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

m = build_model(ModelConfig(name="sasrec", max_len=1000, d_model=64, n_heads=1), 5000).cuda().eval()
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    m.encode(x.cuda())
print("sasrec: padded batch runs in FlashAttention")
print("gpu checks ok")
