"""Quick CUDA checks: ELASTIC / SASRec forward on GPU (fp32 and bf16 autocast) against the CPU."""

import torch

from elasticrec.config import ElasticConfig, ModelConfig
from elasticrec.models import build_model

assert torch.cuda.is_available(), "no CUDA device"
for name in ("sasrec", "elastic"):
    cfg = ModelConfig(name=name, max_len=1000, d_model=64, n_layers=2, n_heads=2, dropout=0.0,
                      elastic=ElasticConfig(n_dispatchers=16, chunk_size=64, memory=True))
    torch.manual_seed(0)
    m = build_model(cfg, 5000).eval()
    x = torch.randint(1, 5001, (4, 1000))
    x[1, :300] = 0
    with torch.no_grad():
        ref = m.encode(x)
        mc = m.cuda()
        out32 = mc.encode(x.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out16 = mc.encode(x.cuda()).float().cpu()
    v = (x > 0)[..., None]
    e32 = ((out32 - ref) * v).abs().max().item()
    e16 = ((out16 - ref) * v).abs().max().item() / ref.abs().max().item()
    print(f"{name}: cuda fp32 max abs err {e32:.2e}, bf16 max rel err {e16:.2e}")
    assert e32 < 1e-3 and e16 < 5e-2, name
print("gpu checks ok")
