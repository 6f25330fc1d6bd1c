"""Sparsity-aware unlearnable noise (SALM, Sun et al., arXiv 2403.10573) for released DICOM pixels.

- ``codec``: DICOM pixel data <-> float arrays, budget held in stored units;
- ``mask``: the sparse saliency mask (exactly round(rho * foreground) pixels);
- ``surrogate``: surrogate models, device selection, batch size from memory;
- ``salm``: the min-min error-minimizing optimisation (Huang et al., arXiv 2101.04898);
- ``labels``: pseudo-labels by clustering surrogate features;
- ``tree``: ``protect_tree``, the step the pipeline and ``guard protect`` call.
"""

from guards.protect.tree import ProtectResult, protect_tree

__all__ = ["ProtectResult", "protect_tree"]
