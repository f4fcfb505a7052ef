"""``wsis synth``: the synthetic dataset."""
