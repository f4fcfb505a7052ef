"""``wsis train-student``: a Mask R-CNN trained on pseudo-labels."""
