"""``wsis show``: overlays of label sets as PNGs and a static HTML report (see :mod:`.stage`)."""

from wsis_cli.stages.show.settings import ShowJob, ShowSettings, parse_ids

__all__ = ["ShowJob", "ShowSettings", "parse_ids"]
