"""Caps on what moesim accepts as input, each with its reason, in one place.

A spec file is read whole and checked field by field; without a cap a file of millions of keys
took minutes and gigabytes and printed a line per key. The caps lie far above anything real (the
largest spec shipped with moesim is about 6 KB and 450 values; a Hugging Face config.json is a
few KB), so they only ever refuse a wrong file.
"""

from __future__ import annotations

#: Spec files (model, hardware YAML, Hugging Face config.json, expert histograms) are refused above
#: this size before they are parsed: ~170x the largest shipped spec, and parsing 1 MB takes < 1 s.
MAX_SPEC_FILE_BYTES = 1_000_000

#: Values (mapping entries, list items, scalars) a parsed spec may hold, counted through YAML
#: aliases, which can repeat a list many times over in a few bytes (the "billion laughs").
MAX_SPEC_VALUES = 100_000

#: Nesting depth of a parsed spec (the deepest shipped spec nests 4 levels).
MAX_SPEC_DEPTH = 32

#: Problems a SpecError lists; the rest are counted ("... and N more").
MAX_LISTED_PROBLEMS = 12

#: Model sizes. moesim walks a model layer by layer (checks, KV bytes, layer kinds) and keeps
#: per-expert routing probabilities, so absurd counts would take hours or exhaust memory before
#: any answer; released models have at most ~130 layers and ~400 routed experts.
MAX_LAYERS = 10_000
MAX_EXPERTS = 1_000_000
#: Any other dimension (hidden, FFN, vocabulary, heads, context tokens): 2**31, so that products
#: of dimensions stay exact, finite floats.
MAX_DIM = 2**31

#: GPUs a PCIe host takes when its platform entry states no ``max_gpus`` (a user's own platform file,
#: or one composed from an entry without it): 8, the most GPUs of any single PCIe host in hardware_db
#: (8-GPU 4U servers such as AWS g6e.48xlarge with 8 x L40S, or GCP g2-standard-96 with 8 x L4). More
#: GPUs than that are several hosts, which moesim does not model.
MAX_GPUS_UNSTATED = 8
