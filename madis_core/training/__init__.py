"""Training: one engine (``engine.run``) for every model and stage, driven by tasks (``tasks.py``).

Modules: ``config`` (YAML + overrides), ``engine`` (loop, DDP, AMP, checkpoints),
``distributed`` (torchrun process group), ``optim`` (AdamW groups), ``schedule``
(warm-up + cosine), ``losses`` (bounded Laplacian), ``distill_losses`` (distillation
losses, adaptive weights), ``mim`` (masks, reconstruction, EMA teacher), ``previews``
(TensorBoard images), ``tasks`` (the task contract and registry), ``madis_task`` (MaDis
MIM / supervised), ``distill`` (student distillation and ``madis distill``), ``train``
(``madis train``). Importing the package registers the built-in tasks.
"""
from madis_core.training import distill, madis_task  # noqa: F401  (register their tasks)
