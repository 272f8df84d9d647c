"""The systems package's structure and shared layer: no system imports another, one extrapolation rule for
every pass (LM head and other once-per-pass work not multiplied by the layer factor), the Plan builder, and
memory rules that take their widths from dtypes and their constants from systems_db."""

import ast
from pathlib import Path

import pytest
from pydantic import BaseModel

import moesim
from moesim import db
from moesim.engine import Engine
from moesim.errors import InfeasibleError, MoesimError
from moesim.modules import Context, Options, Speculative
from moesim.specs import ModelSpec, OfflineWorkload
from moesim.systems import SYSTEMS, get_system
from moesim.systems.base import SIMULATED_LAYERS, Plan, ServingSystem, StepSim, simulate_layers, step_sim
from moesim.systems.shared.attention import eager_attention_peak_bytes, eager_traffic_bytes_per_score
from moesim.systems.shared.memory import activation_bytes, prefill_logits_bytes
from moesim.systems.shared.tensor_parallel import LayerTimes

SYSTEMS_DIR = Path(moesim.__file__).parent / "systems"
SYSTEM_MODULES = sorted(p.stem for p in SYSTEMS_DIR.glob("*.py") if p.stem not in ("__init__", "base")
                        and not p.stem.startswith("_"))
#: a system's private companion modules, ``_<system>_*.py``: only that system may import them
PRIVATE_MODULES = sorted(p.stem for p in SYSTEMS_DIR.glob("_*.py") if p.stem != "__init__")


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the moesim modules ``path`` imports (relative imports resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}  # `from . import x` names a module
    return names


def test_no_systems_module_imports_another_system_or_the_database():
    assert {"gpu_resident", "vllm", "moe_gen", "flexgen"} <= set(SYSTEM_MODULES)
    others = {f"moesim.systems.{m}" for m in SYSTEM_MODULES + PRIVATE_MODULES}
    paths = [SYSTEMS_DIR / f"{m}.py" for m in SYSTEM_MODULES + PRIVATE_MODULES]
    for path in paths + sorted((SYSTEMS_DIR / "shared").glob("*.py")):
        package = "moesim.systems.shared" if path.parent.name == "shared" else "moesim.systems"
        imported = _imported_modules(path, package)
        owner = next((m for m in SYSTEM_MODULES if path.stem.startswith(f"_{m}_")), path.stem)
        own = {f"{package}.{path.stem}", f"moesim.systems.{owner}"} | {
            f"moesim.systems.{m}" for m in PRIVATE_MODULES if m.startswith(f"_{owner}_")}
        assert not (imported & others) - own, f"{path.name} imports another system: {(imported & others) - own}"
        if path.parent.name != "shared":  # systems get models and constants through the Context and base
            assert not {n for n in imported if n.startswith("moesim.db")}, f"{path.name} reads the database"


def test_registry_finds_every_system_and_nothing_in_the_shared_package():
    assert "moe-gen-gpu" in SYSTEMS and SYSTEMS["moe-gen-gpu"].__module__ == "moesim.systems.moe_gen"
    assert all(".shared" not in cls.__module__ for cls in SYSTEMS.values())
    assert get_system("moe_gen_gpu").name == "moe-gen-gpu"


# ---- the extrapolation rule ------------------------------------------------------------------------------
def _toy_layer(state: dict):
    """A layer: its weights copied (2 s on h2d), then computed (1 s on the GPU) after the copy and the
    previous layer's compute. Copies run back to back, so the steady state is copy-bound: 2 s a layer."""
    def build(eng: Engine, i: int, kind: str) -> int:
        copy = eng.add(f"L{i} copy", "h2d", 2.0, category="transfer")
        state["last"] = eng.add(f"L{i} compute", "gpu", 1.0, [copy, state.get("last")], category="experts")
        return state["last"]
    return build


def _toy_pass(runs: list) -> StepSim:
    engine = Engine()
    ext = simulate_layers(engine, runs, _toy_layer({}))
    engine.add("lm head", "gpu", 0.5, [len(engine.tasks) - 1], category="head")
    return step_sim(engine, ext, sum(c for _, c in runs))


def test_extrapolated_layers_repeat_the_last_layer_and_the_head_counts_once():
    layers = SIMULATED_LAYERS + 3
    step = _toy_pass([("moe", layers)])
    assert step.simulated_layers == SIMULATED_LAYERS
    # by hand: copies end at 2, 4, ..., 2L; the last compute at 2L + 1; the head after it
    assert step.time_s == pytest.approx(2.0 * layers + 1.0 + 0.5)
    assert step.busy_s == pytest.approx({"h2d": 2.0 * layers, "gpu": 1.0 * layers + 0.5})
    assert step.category_s == pytest.approx({"transfer": 2.0 * layers, "experts": 1.0 * layers, "head": 0.5})
    full = _toy_pass([("moe", 1)] * layers)  # every layer simulated
    assert full.simulated_layers == layers
    assert step.time_s == pytest.approx(full.time_s)
    assert step.busy_s == pytest.approx(full.busy_s) and step.category_s == pytest.approx(full.category_s)
    assert sum(step.category_s.values()) == pytest.approx(sum(step.busy_s.values()))


@pytest.fixture(scope="module")
def h100():
    return moesim.get_hardware("h100-sxm")


@pytest.mark.parametrize("system,params", [("gpu-resident", {}), ("vllm", {"enforce_eager": True})])
def test_decode_breakdown_prices_the_lm_head_once(system, params, h100):
    """Qwen3-30B-A3B (48 identical MoE layers, a 151936-token vocabulary): the breakdown's head is the head's
    own cost, not its cost times 48 / 3; the categories add up to the busy time of every resource (eager
    execution: every module priced by ``ctx.gpu_s`` as fitted)."""
    work = OfflineWorkload(num_requests=64, prompt_tokens=512, gen_tokens=64)
    ctx = Context(moesim.get_model("qwen3-30b-a3b"), h100, work, Options())
    plan = get_system(system)(params).plan(ctx)
    context, mid = plan.mid_decode
    b = plan.batch_size
    head_s = ctx.gpu_s(ctx.head(b, b))
    layer = LayerTimes.of(ctx, b, [(b, 1, context)])
    layers = ctx.model.num_layers
    assert mid.category_s["head"] == pytest.approx(head_s)
    assert sum(mid.category_s.values()) == pytest.approx(sum(mid.busy_s.values()))
    per_layer = layer.attn_proj + layer.core[False] + layer.router + layer.experts + layer.shared
    assert mid.busy_s["gpu"] == pytest.approx(layers * per_layer + head_s)
    assert mid.category_s["experts"] == pytest.approx(layers * (layer.experts + layer.shared))
    pred = moesim.predict("qwen3-30b-a3b", h100, system, work.model_dump(), system_params=params)
    assert pred.decode_step_breakdown_s["head"] == pytest.approx(head_s)


# ---- the Plan builder and the single-GPU refusal ---------------------------------------------------------
class _ToyParams(BaseModel):
    pass


class _Toy(ServingSystem):
    name = "toy"
    summary = "a system for testing the base class"
    Params = _ToyParams

    def plan(self, ctx):  # pragma: no cover - not called
        raise NotImplementedError


def _step(gpu_bytes: float) -> StepSim:
    return StepSim(1.0, Engine(), 1, 1, {}, {}, {"gpu": gpu_bytes})


def test_plan_builder_takes_the_gpu_peak_over_every_step():
    toy = _Toy()
    plan = toy.make_plan((8, 3), (_step(5.0), 2, 1024), (4.0, [(513, _step(7.0)), (540, _step(6.0))]), config={},
                         host_mem_bytes=1.0, placement={}, also_run=(_step(9.0),))
    assert isinstance(plan, Plan) and plan.system == "toy"
    assert (plan.batch_size, plan.num_batches, plan.prefill_passes_per_batch, plan.prefill_tokens_per_pass) == (8, 3, 2, 1024)
    assert plan.gpu_mem_bytes == 9.0 and plan.notes == []
    assert plan.total_time_s == pytest.approx(3 * (2 * 1.0 + 4.0))


def test_single_gpu_refusal_names_the_system_and_its_reason(h100):
    ctx = Context(moesim.get_model("mixtral-8x7b"), moesim.get_hardware("h100-sxm", num_gpus=2),
                  OfflineWorkload(num_requests=8, prompt_tokens=128, gen_tokens=8), Options())
    with pytest.raises(InfeasibleError, match=r"^moe-gen-gpu is modelled on one GPU \(data parallelism"):
        get_system("moe-gen-gpu")().plan(ctx)


# ---- data, not code: shares, dtypes, constants -----------------------------------------------------------
def test_mixtral_qkv_share_is_sixty_percent():
    """q 4096 x 4096, k and v 4096 x 1024 each, o 4096 x 4096: (16.8 + 4.2 + 4.2) / 41.9 M = 0.6."""
    m = moesim.get_model("mixtral-8x7b")
    assert m.attention.qkv_share(m.hidden_size) == pytest.approx((4096 * 4096 + 2 * 4096 * 1024) / (2 * 4096 * 4096 + 2 * 4096 * 1024))
    assert m.attention.qkv_share(m.hidden_size) == pytest.approx(0.6)
    ctx = Context(m, moesim.get_hardware("c2"), OfflineWorkload(), Options())
    qkv, out = ctx.attention_proj_split(100)
    assert qkv.flop == pytest.approx(0.6 * ctx.attention_proj(100).flop)
    assert qkv.flop + out.flop == pytest.approx(ctx.attention_proj(100).flop)


def test_mla_qkv_share_counts_the_query_and_kv_paths_before_the_core():
    """DeepSeek-V2: q 5120 x 1536 + 1536 x 128 x 192, kv down 5120 x 576, kv up 512 x 128 x 256, o 128 x 128 x 5120."""
    m = moesim.get_model("deepseek-v2")
    pre = 5120 * 1536 + 1536 * 128 * 192 + 5120 * 576 + 512 * 128 * 256
    o = 128 * 128 * 5120
    assert m.attention.qkv_share(m.hidden_size) == pytest.approx(pre / (pre + o))


def test_router_weights_take_the_models_router_dtype():
    base = moesim.get_model("mixtral-8x7b")
    fp32 = ModelSpec.model_validate({**base.model_dump(), "moe": {**base.moe.model_dump(), "router_dtype": "fp32"}})
    work, hw = OfflineWorkload(), moesim.get_hardware("c2")
    c16, c32 = Context(base, hw, work, Options()), Context(fp32, hw, work, Options())
    assert c16.router_weight_bytes == 4096 * 8 * 2.0
    assert c32.resident_weight_bytes - c16.resident_weight_bytes == pytest.approx(32 * 4096 * 8 * (4.0 - 2.0))
    with pytest.raises(ValueError, match="router_dtype"):
        ModelSpec.model_validate({**base.model_dump(), "moe": {**base.moe.model_dump(), "router_dtype": "fp7"}})


def test_activation_widths_come_from_the_activation_dtype():
    m, hw = moesim.get_model("mixtral-8x7b"), moesim.get_hardware("c2")
    bf16 = Context(m, hw, OfflineWorkload(), Options())
    fp32 = Context(m, hw, OfflineWorkload(), Options(activation_dtype="fp32"))
    shared = db.system_constants("shared")
    per_token = (shared.value("activation_hidden_tensors_per_token") * 4096
                 + shared.value("activation_ffn_tensors_per_token") * 2 * 14336)
    assert activation_bytes(bf16, 10) == pytest.approx(10 * per_token * 2.0)
    assert activation_bytes(fp32, 10) == pytest.approx(2 * activation_bytes(bf16, 10))
    assert activation_bytes(bf16, 10, "fp32", shards=1) == activation_bytes(fp32, 10)
    assert fp32.hidden_state_bytes(3) == 3 * 4096 * 4.0
    # Hugging Face prefill logits: activation dtype, then an fp32 copy
    assert prefill_logits_bytes(bf16, 512) == 512 * 32000 * (2.0 + 4.0)
    # eager attention: bf16 scores + fp32 softmax held (6 B), 16 B moved; bf16 throughout 4 B and 8 B
    assert eager_attention_peak_bytes(bf16, 1, 1, 1, "fp32") == 32 * 6.0
    assert eager_attention_peak_bytes(bf16, 1, 1, 1, "bf16") == 32 * 4.0
    assert (eager_traffic_bytes_per_score(bf16, "fp32"), eager_traffic_bytes_per_score(bf16, "bf16")) == (16.0, 8.0)


def test_every_system_constant_names_its_source_and_the_systems_using_them_load():
    table = db.systems()
    assert {"shared", "llama-cpp", "moe-gen", "moe-lightning"} <= set(table.entries)
    for entry in table.entries.values():
        assert entry.sources
        for key, const in entry.constants.items():
            assert const.source.strip(), f"{entry.name}.{key} has no source"
    assert get_system("moe-gen-gpu")().constants.name == "moe-gen"  # MoE-Gen(G) shares MoE-Gen's rules
    with pytest.raises(KeyError, match="no constant"):
        table.get("shared").value("nonexistent")


def test_draft_model_reaches_the_system_through_the_context():
    m, hw, work = moesim.get_model("mixtral-8x7b"), moesim.get_hardware("c2"), OfflineWorkload()
    draft = moesim.get_model("olmoe-1b-7b")
    unresolved = Context(m, hw, work, Options(speculative=Speculative("olmoe-1b-7b")))
    with pytest.raises(MoesimError, match="not resolved"):
        unresolved.draft_context()
    ctx = Context(m, hw, work, Options(kv_dtype="fp8", speculative=Speculative("olmoe-1b-7b", draft=draft)))
    d = ctx.draft_context()
    assert d.model is draft and d.options.kv_dtype == "fp8" and d.options.speculative is None
    assert Context(m, hw, work, Options()).draft_context() is None
