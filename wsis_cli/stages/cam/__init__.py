"""``wsis cam``: class attention maps from image-level labels."""
