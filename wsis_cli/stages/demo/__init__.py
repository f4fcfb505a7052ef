"""``wsis demo``: every path on an embedded default."""
