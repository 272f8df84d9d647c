"""Engine invariants: stream order, dependencies, makespan bounds, memory checking, traces."""

import json

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.engine import BufferRing, Engine
from moesim.errors import SimulationError


def test_stream_order_and_overlap():
    e = Engine()
    c0 = e.add("copy0", "h2d", 2.0)
    c1 = e.add("copy1", "h2d", 2.0)
    k0 = e.add("compute0", "gpu", 3.0, [c0])
    k1 = e.add("compute1", "gpu", 3.0, [c1])
    assert e.tasks[k0].start_s == 2.0 and e.tasks[k1].start_s == 5.0
    assert e.makespan_s == 8.0  # copy1 hidden behind compute0


def test_buffer_ring_blocks_copy_until_slot_free():
    e = Engine()
    ring = BufferRing(1)
    for i in range(3):
        c = e.add(f"copy{i}", "h2d", 1.0, [ring.acquire()])
        k = e.add(f"compute{i}", "gpu", 5.0, [c])
        ring.release(k)
    # single buffer: no overlap, 3 x (1 + 5)
    assert e.makespan_s == 18.0


def test_memory_over_capacity_is_an_error():
    e = Engine(memory_capacity_bytes={"gpu": 10.0})
    a = e.add("a", "gpu", 1.0)
    e.hold("gpu", 6.0, "x", a, a)
    e.hold("gpu", 6.0, "y", a, a)
    with pytest.raises(SimulationError, match="short by"):
        e.check_memory()


def test_released_memory_is_reused():
    e = Engine(memory_capacity_bytes={"gpu": 10.0})
    a = e.add("a", "gpu", 1.0)
    b = e.add("b", "gpu", 1.0, [a])
    e.hold("gpu", 8.0, "x", a, a)
    e.hold("gpu", 8.0, "y", b, b)
    assert e.check_memory()["gpu"] == 8.0


def test_dependency_on_future_task_rejected():
    e = Engine()
    with pytest.raises(SimulationError):
        e.add("a", "gpu", 1.0, [3])


def test_chrome_trace_structure(tmp_path):
    e = Engine()
    c = e.add("copy", "h2d", 1e-3, nbytes=100)
    e.add("compute", "gpu", 2e-3, [c], flop=10)
    path = tmp_path / "t.json"
    e.write_chrome_trace(path)
    trace = json.loads(path.read_text())
    complete = [ev for ev in trace["traceEvents"] if ev["ph"] == "X"]
    names = {ev["args"]["name"] for ev in trace["traceEvents"] if ev.get("name") == "thread_name"}
    assert names == {"h2d", "gpu"} and len(complete) == 2
    assert complete[1]["ts"] == pytest.approx(1000.0) and complete[1]["dur"] == pytest.approx(2000.0)


tasks = st.lists(
    st.tuples(st.sampled_from(["gpu", "h2d", "cpu"]), st.floats(0.0, 10.0), st.lists(st.integers(0, 50), max_size=3)),
    min_size=1, max_size=40,
)


@given(tasks)
@settings(max_examples=200, deadline=None)
def test_makespan_between_busiest_resource_and_total_work(spec):
    e = Engine()
    for i, (res, dur, deps) in enumerate(spec):
        e.add(f"t{i}", res, dur, [d for d in deps if d < i])
    busy = e.busy_s()
    total = sum(busy.values())
    assert max(busy.values()) <= e.makespan_s + 1e-9
    assert e.makespan_s <= total + 1e-9
    assert nx.is_directed_acyclic_graph(e.to_networkx())
    for t in e.tasks:
        for d in t.deps:
            assert e.tasks[d].end_s <= t.start_s + 1e-12
