"""The operations measured, written plainly in torch. moesim's ``ops`` module models exactly these.

* expert_ffn: x @ W13 (hidden -> 2 ffn), SiLU(gate) * up, @ W2 (ffn -> hidden)
* moe_loop:   Hugging Face transformers' Mixtral loop: router, softmax, top-k, one_hot mask, a
              host sync to list the experts hit, then per expert gather, FFN, scale, index_add_
* moe_fused:  router, top-k, sort token-expert pairs by expert, one grouped GEMM per matrix
              (torch._grouped_mm where it works, else a padded batched GEMM), scale, index_add_
* attention:  scaled_dot_product_attention with grouped KV heads
* mla_decode: absorbed MLA decode over the cached latent (DeepSeek-V2, section 2.1)
* offloaded_moe_layer: expert weights in pinned host memory, copied on a copy stream into two
              device buffers while the compute stream runs the previous experts
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rand(*shape, dtype=torch.bfloat16, device="cpu", pin=False, scale=0.02):
    t = (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype)
    return t.pin_memory() if pin else t


def expert_ffn(x, w13, w2):
    h = x @ w13
    gate, up = h.chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2


def route(x, router_w, top_k):
    logits = x @ router_w
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
    return weights, experts


def moe_loop(x, router_w, w13, w2, top_k):
    """w13: [E, hidden, 2 ffn], w2: [E, ffn, hidden]."""
    num_experts = w13.shape[0]
    weights, experts = route(x, router_w, top_k)
    out = torch.zeros_like(x)
    mask = F.one_hot(experts, num_classes=num_experts).permute(2, 1, 0)  # [E, k, T]
    hit = (mask.sum(dim=(-1, -2)) > 0).nonzero().flatten().tolist()  # host sync
    for e in hit:
        slot, token = torch.where(mask[e])
        y = expert_ffn(x[token], w13[e], w2[e]) * weights[token, slot, None]
        out.index_add_(0, token, y)
    return out


_GROUPED_OK: dict[str, bool] = {}


def _grouped(a, w, offs):
    return torch._grouped_mm(a, w, offs=offs)


def grouped_kernel_name(device) -> str:
    key = str(device)
    if key not in _GROUPED_OK:
        ok = False
        if hasattr(torch, "_grouped_mm") and torch.cuda.is_available() and str(device).startswith("cuda"):
            try:
                a = rand(64, 64, device=device)
                w = rand(2, 64, 32, device=device)
                offs = torch.tensor([32, 64], device=device, dtype=torch.int32)
                out = _grouped(a, w, offs)
                ref = torch.cat([a[:32] @ w[0], a[32:] @ w[1]])
                ok = bool(torch.allclose(out.float(), ref.float(), atol=1e-2, rtol=1e-2))
            except Exception:
                ok = False
        _GROUPED_OK[key] = ok
    return "torch._grouped_mm" if _GROUPED_OK[key] else "padded_bmm"


def moe_fused(x, router_w, w13, w2, top_k):
    num_experts = w13.shape[0]
    weights, experts = route(x, router_w, top_k)
    flat = experts.flatten()
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    xs = x[token]
    counts = torch.bincount(flat, minlength=num_experts)
    if grouped_kernel_name(x.device) == "torch._grouped_mm":
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = _grouped(xs, w13, offs)
        gate, up = h.chunk(2, dim=-1)
        y = _grouped((F.silu(gate) * up).contiguous(), w2, offs)
    else:
        starts = torch.cumsum(counts, 0) - counts
        sorted_e = flat[order]
        pos = torch.arange(flat.numel(), device=x.device) - starts[sorted_e]
        width = int(counts.max().item())  # one host sync
        padded = x.new_zeros(num_experts, width, x.shape[1])
        padded[sorted_e, pos] = xs
        h = torch.bmm(padded, w13)
        gate, up = h.chunk(2, dim=-1)
        y = torch.bmm(F.silu(gate) * up, w2)[sorted_e, pos]
    y = y * weights.flatten()[order, None]
    out = torch.zeros_like(x)
    out.index_add_(0, token, y)
    return out


def attention(q, k, v, causal):
    """q: [B, Hq, Lq, D], k/v: [B, Hkv, Lkv, D]."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1, enable_gqa=True)
    except TypeError:  # older torch without enable_gqa
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                              is_causal=causal and q.shape[2] > 1)


def mla_decode(q_lat, q_rope, latent, k_rope):
    """q_lat: [b, h, r], q_rope: [b, h, d_r], latent: [b, L, r], k_rope: [b, L, d_r] -> [b, h, r]."""
    scale = (q_lat.shape[-1] + q_rope.shape[-1]) ** -0.5
    scores = (q_lat @ latent.transpose(1, 2) + q_rope @ k_rope.transpose(1, 2)) * scale
    probs = torch.softmax(scores.float(), dim=-1).to(latent.dtype)
    return probs @ latent


class OffloadedExperts:
    """Experts in pinned host memory streamed through ``buffers`` device slots on a copy stream."""

    def __init__(self, w13_host, w2_host, device, buffers=2):
        self.w13_host, self.w2_host = w13_host, w2_host
        self.device = device
        self.buffers = buffers
        num, hidden, two_ffn = w13_host.shape
        self.b13 = [torch.empty(hidden, two_ffn, dtype=w13_host.dtype, device=device) for _ in range(buffers)]
        self.b2 = [torch.empty(w2_host.shape[1:], dtype=w2_host.dtype, device=device) for _ in range(buffers)]
        self.cuda = str(device).startswith("cuda")
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def run(self, xs_by_expert, compute_fn=expert_ffn):
        """xs_by_expert: list (one per expert) of token tensors on the device; returns outputs."""
        outs = []
        if not self.cuda:
            for e, xs in enumerate(xs_by_expert):
                slot = e % self.buffers
                self.b13[slot].copy_(self.w13_host[e])
                self.b2[slot].copy_(self.w2_host[e])
                outs.append(compute_fn(xs, self.b13[slot], self.b2[slot]) if xs.shape[0] else xs)
            return outs
        compute = torch.cuda.current_stream(self.device)
        copied = [torch.cuda.Event() for _ in range(self.buffers)]
        freed = [None] * self.buffers
        for e, xs in enumerate(xs_by_expert):
            slot = e % self.buffers
            with torch.cuda.stream(self.copy_stream):
                if freed[slot] is not None:
                    self.copy_stream.wait_event(freed[slot])
                self.b13[slot].copy_(self.w13_host[e], non_blocking=True)
                self.b2[slot].copy_(self.w2_host[e], non_blocking=True)
                copied[slot].record(self.copy_stream)
            compute.wait_event(copied[slot])
            outs.append(compute_fn(xs, self.b13[slot], self.b2[slot]) if xs.shape[0] else xs)
            ev = torch.cuda.Event()
            ev.record(compute)
            freed[slot] = ev
        return outs


def offloaded_moe_layer(x, router_w, experts: OffloadedExperts, top_k):
    num_experts = experts.w13_host.shape[0]
    weights, chosen = route(x, router_w, top_k)
    flat = chosen.flatten()
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    counts = torch.bincount(flat, minlength=num_experts).tolist()  # host sync: segment sizes
    xs = x[token]
    segments = list(torch.split(xs, counts))
    ys = experts.run(segments)
    y = torch.cat(ys) * weights.flatten()[order, None]
    out = torch.zeros_like(x)
    out.index_add_(0, token, y)
    return out


# ---- a module-based-batching decode step (MoE-Gen, arXiv 2503.09716, section 4) ----------------
SHAPES = {
    # hidden, q heads, kv heads, head_dim, experts, top_k, expert ffn, shared ffn (all shared experts together)
    "mixtral-8x7b": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, experts=8, top_k=2, ffn=14336, shared_ffn=0),
    "deepseek-v2-lite": dict(hidden=2048, heads=16, kv_heads=16, head_dim=128, experts=64, top_k=6, ffn=1408,
                             shared_ffn=2816, mla=True, kv_lora=512, rope=64, nope=128),
    "tiny": dict(hidden=64, heads=4, kv_heads=2, head_dim=16, experts=4, top_k=2, ffn=96, shared_ffn=0),
}


def attention_weight_shapes(s: dict) -> dict[str, tuple[int, ...]]:
    """The attention weights of one layer (what moesim counts as AttentionSpec.params)."""
    h = s["hidden"]
    if s.get("mla"):
        heads, nope, rope, r, d = s["heads"], s["nope"], s["rope"], s["kv_lora"], s["head_dim"]
        return {"w_in": (h, heads * (nope + rope) + r + rope), "w_uk": (heads, nope, r), "w_uv": (heads, r, d),
                "w_o": (heads * d, h)}
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    return {"w_in": (h, q + 2 * kv), "w_o": (q, h)}


class DecodeStep:
    """One decode step over ``layers`` layers, everything but the hidden states in pinned host memory.

    Per layer: copy the attention weights (double-buffered over layers); QKV projection of all
    ``batch`` tokens; attention in micro-batches of ``micro_batch`` sequences, each waiting for its
    KV copied from the host (two KV buffers); output projection; the MoE layer with every expert
    streamed from the host (:class:`OffloadedExperts`); shared experts stay on the GPU. The new
    tokens' KV is not written back (the D2H copy is left out of both measurement and model).
    Host buffers are shared by the layers (random data, so nothing is cached across layers).
    """

    def __init__(self, model: str, layers: int, batch: int, kv_len: int, micro_batch: int, device):
        s = SHAPES[model]
        self.s, self.layers, self.batch, self.kv_len, self.mb = s, layers, batch, kv_len, micro_batch
        self.device = device
        self.cuda = str(device).startswith("cuda")
        pin = self.cuda
        shapes = attention_weight_shapes(s)
        self.attn_host = {k: rand(*v, pin=pin) for k, v in shapes.items()}
        self.attn_dev = [{k: torch.empty(v, dtype=torch.bfloat16, device=device) for k, v in shapes.items()}
                         for _ in range(2)]
        if s.get("mla"):
            kv_shapes = {"latent": (batch, kv_len, s["kv_lora"]), "k_rope": (batch, kv_len, s["rope"])}
        else:
            kv_shapes = {"k": (batch, s["kv_heads"], kv_len, s["head_dim"]),
                         "v": (batch, s["kv_heads"], kv_len, s["head_dim"])}
        self.kv_host = {k: rand(*v, pin=pin) for k, v in kv_shapes.items()}
        self.kv_dev = [{k: torch.empty((micro_batch,) + v[1:], dtype=torch.bfloat16, device=device)
                        for k, v in kv_shapes.items()} for _ in range(2)]
        e, h, f = s["experts"], s["hidden"], s["ffn"]
        self.experts = OffloadedExperts(rand(e, h, 2 * f, pin=pin), rand(e, f, h, pin=pin), device)
        self.router = rand(h, e, device=device)
        self.shared = (rand(h, 2 * s["shared_ffn"], device=device), rand(s["shared_ffn"], h, device=device)) \
            if s["shared_ffn"] else None
        self.x = rand(batch, h, device=device, scale=1.0)
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def _copy(self, dst: dict, src: dict, rows: slice | None, wait=None):
        """Copy (rows of) host tensors into device buffers on the copy stream; returns an event."""
        if not self.cuda:
            for k in dst:
                dst[k].copy_(src[k][rows] if rows is not None else src[k])
            return None
        with torch.cuda.stream(self.copy_stream):
            if wait is not None:
                self.copy_stream.wait_event(wait)
            for k in dst:
                n = rows.stop - rows.start if rows is not None else None
                target = dst[k][:n] if n is not None else dst[k]
                target.copy_(src[k][rows] if rows is not None else src[k], non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.copy_stream)
        return ev

    def _wait(self, ev):
        if ev is not None:
            torch.cuda.current_stream(self.device).wait_event(ev)

    def _record(self):
        if not self.cuda:
            return None
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def _attention(self, w: dict, x):
        s, b = self.s, x.shape[0]
        proj = x @ w["w_in"]
        outs = []
        kv_free = [None, None]
        for m, start in enumerate(range(0, b, self.mb)):
            rows = slice(start, min(start + self.mb, b))
            n = rows.stop - rows.start
            slot = m % 2
            done = self._copy(self.kv_dev[slot], self.kv_host, rows, kv_free[slot])
            self._wait(done)
            kv = {k: v[:n] for k, v in self.kv_dev[slot].items()}
            p = proj[rows]
            if s.get("mla"):
                heads, nope, rope = s["heads"], s["nope"], s["rope"]
                q = p[:, :heads * (nope + rope)].reshape(n, heads, nope + rope)
                q_lat = torch.einsum("bhd,hdr->bhr", q[..., :nope], w["w_uk"])
                o_lat = mla_decode(q_lat, q[..., nope:].contiguous(), kv["latent"], kv["k_rope"])
                outs.append(torch.einsum("bhr,hrd->bhd", o_lat, w["w_uv"]).reshape(n, -1))
            else:
                hq, d = s["heads"], s["head_dim"]
                q = p[:, :hq * d].reshape(n, hq, 1, d)
                outs.append(attention(q, kv["k"], kv["v"], True).reshape(n, hq * d))
            kv_free[slot] = self._record()
        return torch.cat(outs) @ w["w_o"]

    def __call__(self):
        x = self.x
        attn_free = [None, None]
        pending = self._copy(self.attn_dev[0], self.attn_host, None)
        for layer in range(self.layers):
            slot = layer % 2
            self._wait(pending)
            if layer + 1 < self.layers:  # prefetch the next layer's attention weights
                pending = self._copy(self.attn_dev[1 - slot], self.attn_host, None, attn_free[1 - slot])
            h = x + self._attention(self.attn_dev[slot], x)
            attn_free[slot] = self._record()
            moe = offloaded_moe_layer(h, self.router, self.experts, self.s["top_k"])
            if self.shared is not None:
                moe = moe + expert_ffn(h, *self.shared)
            x = h + moe
        return x
