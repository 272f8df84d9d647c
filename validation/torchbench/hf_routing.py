"""Which experts the random-weight models of ``hf_generate.py`` route their tokens to.

The transformers cells (``validation/measurements/h200/transformers/``) time models built from published configs
with random bf16 weights (``hf_generate.build``: every matrix drawn from N(0, 0.02) by a generator seeded 0 on the
device). Their routers are random too, and the eager experts backend loops over the experts a forward hits, so a
cell's time depends on how many experts its tokens reach, which uniform routing (moesim's default) overstates when
the random router concentrates tokens. This script measures that routing for the cells' shapes, on the same device
with the same build: for each model (its measured layer count) and each prefill shape (batch x prompt of
``hf_generate.BATCHES`` x ``PROMPTS`` up to ``MAX_PREFILL_TOKENS``), one prefill forward (eager experts) with random
token ids, recording per MoE layer the tokens each expert received (the ``top_k_index`` the experts module is
called with); then one decode step on that cache (each sequence's next token), recorded alike. Two draws of ids per
shape (``--draws``) show how much the ids matter.

Output ``$OUT/hf_routing.json``: ``{"meta": ..., "cells": [{"model", "layers", "batch", "prompt", "phase", "draw",
"counts": [[tokens per expert] per MoE layer]}]}``. Nothing is timed.

Run on the device: ``PYTHONUNBUFFERED=1 python validation/torchbench/hf_routing.py --out $OUT``; here on the CPU:
``python validation/torchbench/hf_routing.py --tiny --out /tmp/hfr``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hf_generate as H  # noqa: E402


class Capture:
    """Forward pre-hooks on every experts module (transformers 5: ``forward(hidden_states, top_k_index,
    top_k_weights)``), recording ``top_k_index`` per call; the layer order is the call order."""

    def __init__(self, model, num_experts: int):
        self.e = num_experts
        self.calls: list[list[int]] = []
        self.handles = []
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("Experts"):
                self.handles.append(mod.register_forward_pre_hook(self._hook, with_kwargs=True))
        if not self.handles:
            raise RuntimeError("no experts module found (transformers 5's *Experts classes)")

    def _hook(self, mod, args, kwargs):
        idx = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)
        if idx is None:
            raise RuntimeError(f"{type(mod).__name__}: no top_k_index among the call's arguments")
        flat = idx.reshape(-1).to(torch.int64)
        self.calls.append(torch.bincount(flat, minlength=self.e).tolist())

    def take(self) -> list[list[int]]:
        out, self.calls = self.calls, []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="shrunk configs (CPU check of the code path)")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=None)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = json.loads((HERE / "hf_configs.json").read_text())["models"]
    models = args.models or [m for m, _ in H.PHASES if m in entries]
    data = {"meta": {"torch": torch.__version__, "device": str(H.dev()),
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
            "cells": [], "log": []}
    try:
        import transformers
        data["meta"]["transformers"] = transformers.__version__
    except ImportError:
        pass
    path = args.out / "hf_routing.json"
    gen = torch.Generator(device=H.dev()).manual_seed(1234)
    for key in models:
        entry = entries[key]
        layers = 2 if args.tiny else int(entry["measured_layers"])
        t0 = time.perf_counter()
        try:
            model, config = H.build(entry, layers, args.tiny, impl="eager")
            e, k = H.n_experts_topk(config)
            vocab = int(config.vocab_size)
            cap = Capture(model, e)
        except Exception as exc:  # one model's build or hooks failing leaves the others measured
            data["log"].append(f"{key}: {type(exc).__name__}: {exc}")
            print(data["log"][-1], flush=True)
            continue
        data["log"].append(f"{key}: built {layers} layers in {time.perf_counter() - t0:.1f} s; {e} experts, top-{k}")
        for b in H.BATCHES:
            for p in H.PROMPTS:
                if b * p > H.MAX_PREFILL_TOKENS:
                    continue
                for d in range(args.draws):
                    ids = torch.randint(2, vocab, (b, p), device=H.dev(), generator=gen)
                    out, cache, mask = H.prefill_once(model, ids)
                    cell = dict(model=key, layers=layers, batch=b, prompt=p, draw=d, experts=e, top_k=k)
                    data["cells"].append(dict(cell, phase="prefill", counts=cap.take()))
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    mask = torch.cat([mask, mask.new_ones((b, 1))], dim=-1)
                    with torch.no_grad():
                        model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                              logits_to_keep=1)
                    data["cells"].append(dict(cell, phase="decode", counts=cap.take()))
                    del out, cache
            path.write_text(json.dumps(data))
        cap.close()
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(data["log"][-1], flush=True)
    path.write_text(json.dumps(data))
    # the table last: mean experts hit per MoE layer, per model and shape (first draw)
    print(f"{'model':20s} {'b':>4s} {'p':>4s} {'phase':8s} hit/layer of E (uniform expectation)")
    for c in data["cells"]:
        if c["draw"]:
            continue
        hits = [sum(1 for x in layer if x) for layer in c["counts"]]
        n = sum(c["counts"][0]) if c["counts"] else 0
        uni = c["experts"] * (1 - (1 - 1 / c["experts"]) ** n) if n else 0
        print(f"{c['model']:20s} {c['batch']:4d} {c['prompt']:4d} {c['phase']:8s} "
              f"{sum(hits) / max(len(hits), 1):6.1f} of {c['experts']} ({uni:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
