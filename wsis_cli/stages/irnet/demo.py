"""The recipe ``wsis demo`` runs IRNet with: a few epochs, a short CRF and a short random walk."""

from __future__ import annotations

from wsis_cli.stages.irnet.settings import IRNetSettings

DEMO_SETTINGS = IRNetSettings(epochs=6, batch_size=8, crf_iterations=5, walk_steps=128, refine_steps=100, amp=False)
