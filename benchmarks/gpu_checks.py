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

# ELASTIC's fused distribution (model.elastic.distribute=sdpa) on the GPU, bf16: the same outputs
# and gradients as the explicit path, and whether it runs inside the memory-efficient kernel
# (one launch forward, one backward) rather than falling back to the math path
ecfg_sdpa = ModelConfig(name="elastic", max_len=1000, d_model=64, n_layers=2, n_heads=2, dropout=0.0,
                        elastic=ElasticConfig(n_dispatchers=16, chunk_size=32, dispatcher_bias="items",
                                              local_lookback=True, local_position_bias=True))
torch.manual_seed(0)
m_exp = build_model(ecfg_sdpa, 5000).cuda().train()
m_sdpa = copy.deepcopy(m_exp)
for blk in m_sdpa.blocks:
    blk.attn.distribute = "sdpa"
outs = []
for mm in (m_exp, m_sdpa):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = mm.encode(x.cuda()).float()
    h.square().mean().backward()
    outs.append((h.detach(), mm.item_emb.weight.grad.clone()))
rel_h, rel_g = (((b - a).norm() / a.norm()).item() for a, b in zip(*outs))
print(f"elastic distribute=sdpa vs explicit, cuda bf16: output rel err {rel_h:.2e}, "
      f"embedding grad rel err {rel_g:.2e}")
assert rel_h < 5e-2 and rel_g < 5e-2
try:
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        m_sdpa.encode(x.cuda()).float().sum().backward()
    print("elastic distribute=sdpa: runs in the memory-efficient kernel, forward and backward")
except RuntimeError as e:  # informational: the path still works through another backend
    print(f"elastic distribute=sdpa: NOT eligible for the memory-efficient kernel: {str(e).splitlines()[0][:200]}")

# full-softmax CE: the block-wise default (train.ce_impl=chunked) against F.cross_entropy, bf16
# autocast as in training; loss and gradients agree, and its time and peak memory are printed
import time  # noqa: E402

from elasticrec.config import TrainConfig  # noqa: E402

for n_tok, n_items in ((25600, 3416), (12800, 54542)):
    torch.manual_seed(0)
    h = torch.randn(n_tok, 64, device="cuda", requires_grad=True)
    emb = torch.nn.Embedding(n_items + 1, 64).cuda()
    tgt = torch.randint(1, n_items + 1, (n_tok,), device="cuda")
    head = type("Head", (), {"output_embeddings": lambda self: emb.weight, "output_queries": lambda self, q: q})()
    res = {}
    for impl in ("plain", "chunked"):
        for rep in range(3):
            h.grad, emb.weight.grad = None, None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base, t0 = torch.cuda.memory_allocated(), time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = next_item_loss(head, h, tgt, TrainConfig(ce_impl=impl))
            loss.backward()
            torch.cuda.synchronize()
        res[impl] = (loss.item(), h.grad.clone(), emb.weight.grad.clone(), time.perf_counter() - t0,
                     (torch.cuda.max_memory_allocated() - base) / 2**20)
    (lp, hp, ep, tp, mp), (lc, hc, ec, tc, mc) = res["plain"], res["chunked"]
    eh = ((hc - hp).norm() / hp.norm()).item()
    ee = ((ec - ep).norm() / ep.norm()).item()
    print(f"ce {n_tok}x{n_items}: plain {tp * 1e3:.1f} ms {mp:.0f} MiB, chunked {tc * 1e3:.1f} ms {mc:.0f} MiB; "
          f"loss {lp:.5f} vs {lc:.5f}, grad rel err h {eh:.1e} emb {ee:.1e}")
    assert abs(lp - lc) < 1e-2 * abs(lp) and eh < 2e-2 and ee < 2e-2
print("gpu checks ok")
