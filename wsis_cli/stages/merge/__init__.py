"""``wsis merge``: join shard outputs."""
