"""``wsis mal-label``: boxes to instance masks (MAL)."""
