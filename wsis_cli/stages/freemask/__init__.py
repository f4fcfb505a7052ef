"""``wsis freemask``: class-agnostic masks without labels (FreeSOLO's Free Mask)."""
