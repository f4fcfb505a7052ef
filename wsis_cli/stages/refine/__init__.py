"""``wsis refine-crf``: CRF refinement of masks and score maps."""
