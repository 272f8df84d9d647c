"""The multi-GPU campaign (validation/torchbench/multi_gpu.py) on the CPU: two gloo processes, tiny sizes.
The expert-parallel layer's output is checked here against a single-process MoE written in this file."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
HARNESS = Path(__file__).resolve().parents[1] / "validation" / "torchbench"
sys.path.insert(0, str(HARNESS))
import multi_gpu as MG  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi_gpu")
    out, dump = d / "run.json", d / "dump"
    proc = subprocess.run([sys.executable, str(HARNESS / "multi_gpu.py"), "--cpu", "--spawn", "2", "--out", str(out),
                           "--dump", str(dump), "--port", str(_free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), dump, proc.stdout, out


def test_cpu_campaign_runs_end_to_end_and_writes_valid_json(cpu_run):
    data, _, stdout, _ = cpu_run
    assert data["schema"] == 1 and data["harness"] == "multi_gpu" and data["grid"] == "cpu"
    env = data["env"]
    assert env["world_size"] == 2 and env["backend"] == "gloo" and len(env["gpus"]) == 2
    assert {k: env["env_vars"].get(k) for k in MG.MULTICAST_OFF} == MG.MULTICAST_OFF
    fams = {c["family"] for c in data["cases"]}
    assert fams == set(MG.COLLECTIVES) | {"ep_moe", "tp_moe"}
    assert len(data["cases"]) == len(MG.grid("cpu", 2))
    for c in data["cases"]:
        assert "error" not in c and "skipped" not in c, c
        assert 0 < c["p10_s"] <= c["median_s"] <= c["p90_s"] < 5.0, c
        assert c["reps"] >= 3
    for c in data["cases"]:
        if c["family"] == "ep_moe":
            phases = sum(c[k] for k in ("route_s", "dispatch_s", "experts_s", "combine_s"))
            assert 0 < phases and len(c["extra"]["received_rows_per_rank"]) == 2
            # rows received over both ranks = tokens x top-k x ranks
            p = c["params"]
            assert sum(c["extra"]["received_rows_per_rank"]) == pytest.approx(2 * p["tokens"] * p["top_k"])
    assert "elapsed" in stdout.splitlines()[-1]


def test_campaign_checks_pass(cpu_run):
    checks = cpu_run[0]["checks"]
    assert checks["ep_rel_err"]["uniform"] < 1e-5 and checks["ep_rel_err"]["zipf"] < 1e-5
    assert checks["tp_rel_err"] < 1e-5  # column/row-parallel shards summed = the unsharded layer
    assert max(checks["ep_rel_err_bf16"].values()) < 3e-2 and checks["tp_rel_err_bf16"] < 3e-2
    a2a = checks["uneven_all_to_all"]
    assert a2a["all_ranks_ok"] and a2a["content_ok"] and a2a["roundtrip_ok"]
    assert a2a["send_splits"] != a2a["recv_splits"] or len(set(a2a["send_splits"])) > 1


def _single_process_moe(d):
    """Token by token in float64: the chosen experts are the top-k of router logits + bias; their
    weights the softmax of the chosen logits; each expert SiLU(x Wg) * (x Wu) then Wd."""
    x, bias, router = d["x"].double(), d["bias"].double(), d["router"].double()
    w13, w2, k = d["w13_all"].double(), d["w2_all"].double(), d["top_k"]
    ffn = w2.shape[1]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = x[t] @ router
        chosen = torch.topk(logits + bias[t], k).indices
        w = torch.exp(logits[chosen] - logits[chosen].max())
        w = w / w.sum()
        for j, e in enumerate(chosen.tolist()):
            h = x[t] @ w13[e]
            g, u = h[:ffn], h[ffn:]
            out[t] += w[j] * ((g * torch.sigmoid(g) * u) @ w2[e])
    return out


@pytest.mark.parametrize("routing", ["uniform", "zipf"])
def test_expert_parallel_layer_equals_single_process_moe(cpu_run, routing):
    dump = cpu_run[1]
    hit = set()
    for rank in (0, 1):
        d = torch.load(dump / f"ep_{routing}_rank{rank}.pt")
        assert d["out"].dtype == torch.float32 and d["x"].shape[0] == 8 + 3 * rank
        ref = _single_process_moe(d)
        err = float((d["out"].double() - ref).norm() / ref.norm())
        assert err < 1e-5, (routing, rank, err)
        hit |= set(torch.topk(d["x"] @ d["router"] + d["bias"], d["top_k"]).indices.flatten().tolist())
    n_experts = d["w13_all"].shape[0]
    assert any(e < n_experts // 2 for e in hit) and any(e >= n_experts // 2 for e in hit)  # both ranks' experts


def test_zipf_routing_draws_experts_with_zipf_probabilities():
    """Gumbel-top-1 of log p + noise picks expert e with probability p_e."""
    g = torch.Generator().manual_seed(3)
    bias = MG.routing_bias(40000, 8, "zipf", 1.0, g)
    freq = torch.bincount(bias.argmax(1), minlength=8).double() / 40000
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    p = torch.empty(8, dtype=torch.float64)
    p[order] = 1.0 / torch.arange(1, 9, dtype=torch.float64)
    p /= p.sum()
    assert torch.allclose(freq, p, atol=0.01)
    uni = torch.bincount(MG.routing_bias(40000, 8, "uniform", 1.0, g).argmax(1), minlength=8).double() / 40000
    assert torch.allclose(uni, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)


@settings(max_examples=50, deadline=None)
@given(elems=st.integers(1, 10**9), n=st.integers(1, 16))
def test_uneven_counts_cover_the_buffer_in_growing_shares(elems, n):
    counts = MG.uneven_counts(elems, n)
    assert sum(counts) == elems and min(counts) >= 0
    total = n * (n + 1) // 2
    for j, c in enumerate(counts[:-1]):
        assert abs(c - elems * (j + 1) / total) < 1


def test_algorithm_factors_by_hand():
    assert MG.algorithm_factor("all_reduce", 8) == 1.75  # 2 (8 - 1) / 8
    assert MG.algorithm_factor("all_gather", 8) == 0.875
    assert MG.algorithm_factor("all_to_all_uneven", 2) == 0.5
    assert MG.algorithm_factor("reduce_scatter", 1) == 0.0


def test_full_grid_covers_the_brief_and_fits_the_budget():
    cases = MG.grid("full", 8)
    sizes = sorted({c["nbytes"] for c in cases if c["family"] == "all_to_all"})
    assert sizes[0] == 1024 and sizes[-1] == 2**30
    ep = [c for c in cases if c["family"] == "ep_moe"]
    assert {c["model"] for c in ep} == {"mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3"}
    assert {c["routing"] for c in ep} == {"uniform", "zipf"}
    ds = next(c for c in ep if c["model"] == "deepseek-v3")
    assert (ds["hidden"], ds["ffn"], ds["experts"], ds["top_k"]) == (7168, 2048, 256, 8)
    assert max(c["tokens"] for c in ep) == 8192 and min(c["tokens"] for c in ep) == 1
    assert sum(MG.estimate_case_s(c, 8) for c in cases) < 420  # under the --budget-s guard, minutes spare


def test_fit_reads_what_the_harness_writes(cpu_run):
    """Schema check only: gloo times on a shared CPU say nothing about any GPU."""
    from moesim.calibration import collectives as C
    from moesim.specs.collectives import algorithm_factor

    points, envs, synthetic = C.load([cpu_run[3]])
    assert not synthetic and envs[0]["world_size"] == 2
    eager = [p for p in points if p.timing == "eager"]
    assert {p.family for p in eager} == set(MG.COLLECTIVES) and {p.gpus for p in eager} == {2}
    assert len(eager) == 15 and sum(p.held_out_size for p in eager) == 5
    uneven = max(p.nbytes for p in eager if p.family == "all_to_all_uneven")
    assert uneven == pytest.approx(4 / 3 * 64 * 1024, rel=1e-3)  # rank 1 receives 2N/(N+1) of the buffer
    prof = C.fit_profile([cpu_run[3]], "cpu test")  # noisy CPU times: some families may not fit; no error
    for f in prof.timings.get("eager", {}).values():
        assert f.by_gpus[2].fit.cases == 2 and f.by_gpus[2].held_out.cases == 1
    for fam in MG.COLLECTIVES:
        for n in (1, 2, 3, 8):
            assert MG.algorithm_factor(fam, n) == algorithm_factor(fam, n)
