"""Training: one engine (``engine.run``) for every model and stage, driven by tasks (``tasks.py``).

Modules: ``config`` (YAML + overrides), ``engine`` (loop, DDP, AMP, checkpoints),
``distributed`` (torchrun process group), ``optim`` (AdamW groups), ``schedule``
(warm-up + cosine), ``losses`` (bounded Laplacian), ``mim`` (masks, reconstruction,
EMA teacher), ``madis_task`` (MaDis MIM / supervised), ``train`` (``madis train``).
Nothing is imported here eagerly, so ``import madis_core.training.mim`` stays light.
"""
