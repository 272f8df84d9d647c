"""Helpers the serving systems share (the registry does not look for systems here).

* :mod:`.memory` - activation, layer-weight and logit bytes of a forward pass;
* :mod:`.attention` - eager (non-flash) attention: cost and peak of the materialised score matrix;
* :mod:`.search` - simulation-based choice among candidate configurations;
* :mod:`.tensor_parallel` - a Megatron-LM tensor-parallel layer.

A system module imports from here and from :mod:`moesim.systems.base`, never from another system.
"""
