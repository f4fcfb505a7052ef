"""Floors that learnt labellers must beat, and degraded masks to refine."""
