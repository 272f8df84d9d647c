"""What a deployment costs: capital, cloud rent, energy, and the buyer's figures per token.

Pure functions, each with its equation; :func:`cost_of` combines them for one
:class:`~moesim.predict.Prediction` on one resolved :class:`~moesim.specs.Platform`.
Prices come from the hardware database (``launch_price_usd``, ``cloud_usd_per_hour`` of a GPU,
``price_usd_excluding_gpus`` of a platform). A price the database lacks is reported as missing
(``None``) with a note; it is never guessed.

Symbols: n = GPUs, p_gpu = one GPU's launch price ($), p_host = the platform without its GPUs ($),
r_cloud = one GPU's cloud rent ($/h), T = generation throughput (tokens/s), P = wall power (W),
c_e = electricity price ($/kWh), Y = amortisation period (years), d = duty cycle (share of the
hours the machine serves at throughput T).

    capital          C   = n p_gpu + p_host                                   (None if a part is unknown)
    cloud rent       R   = n r_cloud                                           ($/h)
    power            P   = n TDP_gpu (f_g + (1 - f_g) u_gpu) + m TDP_cpu (f_c + (1 - f_c) u_cpu)
    energy           E_h = P / 1000 c_e                                        ($/h)
    $/Mtok, cloud        = R / (3600 T) 1e6
    $/Mtok, owned        = (C / (8760 Y d) + E_h) / (3600 T) 1e6               (capital amortised
                                                                                 linearly, no interest)
    $/Mtok, energy only  = E_h / (3600 T) 1e6
    tok/s per $1k        = T / (C / 1000)
    tokens per joule     = T / P

The power model is first order: u_gpu is the busy share of the GPU's compute stream in a
decode step and u_cpu that of the CPU stream (``Prediction.utilization``); f_g = f_c = 0.3 by
default is an ASSUMED idle/static share of TDP (a busy-waiting GPU with its clocks up and its
memory refreshing draws well above zero), not a measured figure - pass your own. m = CPU
sockets. Electricity defaults to 0.15 $/kWh, the figure MoE-CAP uses (``ENERGY_COST`` in
Auto-CAP's ``moe_cap/utils/cost_utils.py``). Cooling, networking and facility overheads (PUE)
are not included.

MoE-CAP's own cost (Auto-CAP ``moe_cap/utils/cost_utils.py::calculate_cost``, as published):

    capital_cap = p_gpu n + 7214                 (CPU_COST: a fixed $7,214 for the rest of the host)
    energy_cap  = (TDP_gpu n + 350) / 1000 x 0.15 x t_e2e / 3600        (GPUs and CPU at full TDP)
    cost_cap    = 1.2 energy_cap + 1.25 capital_cap

with t_e2e the wall time of the benchmark (here the predicted time for the whole workload). It is
dominated by the purchase price: a capital figure, not a price per token. It is reported beside
ours for comparison, with MoE-CAP's own GPU price/TDP table where it has the GPU.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from ..predict import Prediction
    from ..specs import Platform

#: Default electricity price ($/kWh) - MoE-CAP's ENERGY_COST.
DEFAULT_USD_PER_KWH = 0.15
#: Default amortisation period of owned hardware (years).
DEFAULT_AMORTIZATION_YEARS = 3.0
#: Assumed share of TDP drawn by an idle-but-allocated GPU / CPU (not a measured figure).
DEFAULT_IDLE_FRACTION = 0.3
HOURS_PER_YEAR = 8760.0

@lru_cache(maxsize=1)
def moecap_model() -> dict:
    """MoE-CAP's cost constants and GPU price/TDP table (``hardware_db/prices/moe-cap.yaml``, sourced there)."""
    import yaml

    from ..db import data_root

    return yaml.safe_load((data_root("hardware_db") / "prices" / "moe-cap.yaml").read_text())


def capital_cost_usd(num_gpus: int, gpu_price_usd: float | None,
                     host_price_usd: float | None) -> tuple[float | None, float | None, float | None]:
    """Capital cost C = n p_gpu + p_host.

    Returns ``(gpus_usd, host_usd, total_usd)``; a part whose price is unknown is ``None`` and
    so is the total then.
    """
    gpus = None if gpu_price_usd is None else num_gpus * gpu_price_usd
    total = None if gpus is None or host_price_usd is None else gpus + host_price_usd
    return gpus, host_price_usd, total


def cloud_usd_per_hour(num_gpus: int, gpu_usd_per_hour: float | None) -> float | None:
    """Cloud rent R = n r_cloud ($/h); ``None`` when the GPU has no listed cloud price."""
    return None if gpu_usd_per_hour is None else num_gpus * gpu_usd_per_hour


def power_w(num_gpus: int, gpu_tdp_w: float | None, gpu_utilization: float,
            num_cpus: int, cpu_tdp_w: float | None, cpu_utilization: float = 0.0,
            idle_fraction: float = DEFAULT_IDLE_FRACTION,
            cpu_idle_fraction: float = DEFAULT_IDLE_FRACTION) -> tuple[float | None, float | None]:
    """Wall power of GPUs and CPUs: ``(gpu_w, cpu_w)``.

        P_gpu = n TDP_gpu (f_g + (1 - f_g) u_gpu)
        P_cpu = m TDP_cpu (f_c + (1 - f_c) u_cpu)

    Utilisations are clipped to [0, 1]. A part whose TDP is unknown is ``None``.
    """
    def draw(count: int, tdp: float | None, util: float, idle: float) -> float | None:
        if tdp is None:
            return None
        u = min(1.0, max(0.0, util))
        return count * tdp * (idle + (1.0 - idle) * u)

    return (draw(num_gpus, gpu_tdp_w, gpu_utilization, idle_fraction),
            draw(num_cpus, cpu_tdp_w, cpu_utilization, cpu_idle_fraction))


def energy_usd_per_hour(watts: float, usd_per_kwh: float = DEFAULT_USD_PER_KWH) -> float:
    """Electricity cost E_h = P / 1000 x c_e ($/h)."""
    return watts / 1000.0 * usd_per_kwh


def usd_per_mtok(usd_per_hour: float | None, tok_s: float) -> float | None:
    """$ per million generated tokens at a running cost of ``usd_per_hour``: R / (3600 T) x 1e6."""
    if usd_per_hour is None or tok_s <= 0:
        return None
    return usd_per_hour / (3600.0 * tok_s) * 1e6


def owned_usd_per_hour(capital_usd: float | None, energy_usd_h: float,
                       years: float = DEFAULT_AMORTIZATION_YEARS, duty_cycle: float = 1.0) -> float | None:
    """Running cost of owned hardware: C / (8760 Y d) + E_h ($/h); linear amortisation, no interest."""
    if capital_usd is None:
        return None
    if years <= 0 or not 0 < duty_cycle <= 1:
        raise ValueError("amortisation years must be > 0 and the duty cycle in (0, 1]")
    return capital_usd / (HOURS_PER_YEAR * years * duty_cycle) + energy_usd_h


def tok_s_per_kusd(tok_s: float, capital_usd: float | None) -> float | None:
    """Throughput bought per $1,000 of hardware: T / (C / 1000)."""
    if capital_usd is None or capital_usd <= 0:
        return None
    return tok_s / (capital_usd / 1000.0)


def tokens_per_joule(tok_s: float, watts: float | None) -> float | None:
    """Energy efficiency: T / P (tokens per joule)."""
    if watts is None or watts <= 0:
        return None
    return tok_s / watts


def moecap_cost_usd(e2e_s: float, gpu_price_usd: float, gpu_tdp_w: float, num_gpus: int) -> dict[str, float]:
    """MoE-CAP's ``calculate_cost`` (see the module docstring), with its constants.

    Returns ``{"capital_usd", "energy_usd", "cost_usd"}``:
    capital = p_gpu n + 7214; energy = (TDP_gpu n + 350)/1000 x 0.15 x t_e2e/3600;
    cost = 1.2 energy + 1.25 capital.
    """
    mc = moecap_model()
    capital = gpu_price_usd * num_gpus + mc["cpu_cost_usd"]
    energy = (gpu_tdp_w * num_gpus + mc["cpu_tdp_w"]) / 1000.0 * mc["usd_per_kwh"] * e2e_s / 3600.0
    return {"capital_usd": capital, "energy_usd": energy,
            "cost_usd": energy * mc["energy_scale"] + capital * mc["capital_scale"]}


class CostReport(BaseModel):
    """Costs of one prediction on one platform. ``None`` = a price or TDP the database lacks."""

    model_config = ConfigDict(frozen=True)

    platform: str
    gpu: str
    num_gpus: int
    num_cpus: int
    throughput_tok_s: float
    # capital
    gpu_unit_price_usd: float | None
    gpus_capital_usd: float | None
    host_capital_usd: float | None
    capital_usd: float | None
    capital_known_usd: float  # the sum of the known parts: a lower bound when capital_usd is None
    # running
    cloud_usd_per_hour: float | None
    gpu_power_w: float | None
    cpu_power_w: float | None
    power_w: float | None
    usd_per_kwh: float
    energy_usd_per_hour: float | None
    amortization_years: float
    duty_cycle: float
    # buyer's figures
    usd_per_mtok_cloud: float | None
    usd_per_mtok_owned: float | None
    usd_per_mtok_energy: float | None
    tok_s_per_kusd: float | None
    tokens_per_joule: float | None
    joules_per_token: float | None
    # MoE-CAP
    moecap_cost_usd: float | None
    moecap_capital_usd: float | None
    moecap_energy_usd: float | None
    moecap_prices_from: str | None
    notes: list[str]


def cost_of(prediction: "Prediction", platform: "Platform", *, usd_per_kwh: float = DEFAULT_USD_PER_KWH,
            amortization_years: float = DEFAULT_AMORTIZATION_YEARS, duty_cycle: float = 1.0,
            idle_fraction: float = DEFAULT_IDLE_FRACTION, tok_s: float | None = None) -> CostReport:
    """Cost figures of ``prediction`` run on ``platform`` (the resolved platform it was predicted on).

    ``tok_s`` overrides the throughput the per-token figures use (default: the prediction's
    generation throughput, ``throughput_tok_s``).
    """
    gpu, n = platform.gpu, prediction.num_gpus
    notes: list[str] = []
    if n != platform.num_gpus:
        notes.append(f"prediction uses {n} GPUs, platform lists {platform.num_gpus}; costed with {n}")
    rate = prediction.throughput_tok_s if tok_s is None else tok_s
    gpus_usd, host_usd, capital = capital_cost_usd(n, gpu.launch_price_usd, platform.price_usd_excluding_gpus)
    if gpu.launch_price_usd is None:
        notes.append(f"{gpu.name} has no launch price in hardware_db: capital cost unknown")
    if platform.price_usd_excluding_gpus is None:
        notes.append(f"{platform.name} has no price_usd_excluding_gpus in hardware_db: host cost unknown, "
                     "capital cost unknown")
    cloud = cloud_usd_per_hour(n, gpu.cloud_usd_per_hour)
    if cloud is None:
        notes.append(f"{gpu.name} has no cloud $/hour in hardware_db: cloud $/Mtok unknown")
    util = prediction.utilization
    gpu_w, cpu_w = power_w(n, gpu.tdp_w, util.get("gpu", 0.0), platform.num_cpus, platform.cpu.tdp_w,
                           util.get("cpu", 0.0), idle_fraction, idle_fraction)
    if gpu.tdp_w is None:
        notes.append(f"{gpu.name} has no TDP in hardware_db: power unknown")
    if platform.cpu.tdp_w is None:
        notes.append(f"{platform.cpu.name} has no TDP in hardware_db: power unknown")
    watts = None if gpu_w is None or cpu_w is None else gpu_w + cpu_w
    energy_h = None if watts is None else energy_usd_per_hour(watts, usd_per_kwh)
    owned_h = None if energy_h is None else owned_usd_per_hour(capital, energy_h, amortization_years, duty_cycle)
    notes.append(f"power model: TDP x ({idle_fraction:g} + {1 - idle_fraction:g} x busy share); "
                 f"electricity {usd_per_kwh:g} $/kWh; owned hardware amortised over {amortization_years:g} years "
                 f"at a duty cycle of {duty_cycle:g}; no cooling/facility overhead")
    # MoE-CAP's formula, with its own price table where it has the GPU
    if gpu.name in moecap_model()["gpus"]:
        price, tdp = moecap_model()["gpus"][gpu.name]
        origin = "MoE-CAP's GPU price/TDP table"
    elif gpu.launch_price_usd is not None and gpu.tdp_w is not None:
        price, tdp = gpu.launch_price_usd, gpu.tdp_w
        origin = "hardware_db (MoE-CAP's table lacks this GPU)"
    else:
        price = tdp = None
        origin = None
        notes.append(f"MoE-CAP cost unknown: {gpu.name} is neither in MoE-CAP's table nor priced in hardware_db")
    cap = moecap_cost_usd(prediction.total_time_s, price, tdp, n) if price is not None else None
    return CostReport(
        platform=platform.name, gpu=gpu.name, num_gpus=n, num_cpus=platform.num_cpus, throughput_tok_s=rate,
        gpu_unit_price_usd=gpu.launch_price_usd, gpus_capital_usd=gpus_usd, host_capital_usd=host_usd,
        capital_usd=capital, capital_known_usd=(gpus_usd or 0.0) + (host_usd or 0.0),
        cloud_usd_per_hour=cloud, gpu_power_w=gpu_w, cpu_power_w=cpu_w, power_w=watts, usd_per_kwh=usd_per_kwh,
        energy_usd_per_hour=energy_h, amortization_years=amortization_years, duty_cycle=duty_cycle,
        usd_per_mtok_cloud=usd_per_mtok(cloud, rate), usd_per_mtok_owned=usd_per_mtok(owned_h, rate),
        usd_per_mtok_energy=usd_per_mtok(energy_h, rate), tok_s_per_kusd=tok_s_per_kusd(rate, capital),
        tokens_per_joule=tokens_per_joule(rate, watts),
        joules_per_token=None if watts is None or rate <= 0 else watts / rate,
        moecap_cost_usd=cap["cost_usd"] if cap else None, moecap_capital_usd=cap["capital_usd"] if cap else None,
        moecap_energy_usd=cap["energy_usd"] if cap else None, moecap_prices_from=origin, notes=notes,
    )
