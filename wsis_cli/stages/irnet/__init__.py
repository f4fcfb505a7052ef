"""``wsis irnet``: CAMs to instance pseudo-labels (IRNet)."""
