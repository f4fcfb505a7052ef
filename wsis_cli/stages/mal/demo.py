"""The recipe ``wsis demo`` labels its boxes with: the CLI defaults, trained longer."""

from __future__ import annotations

from wsis_cli.stages.mal.settings import MalSettings

# The defaults (the packaged ImageNet EfficientNet-Lite0 at the auto crop: 96² for the demo's boxes) for epochs that
# are counted over the data set: the demo's 24 small images hold ~100 boxes, so 6 epochs would be ~150
# steps; 24 epochs give the few hundred the defaults are sized for.
DEMO_SETTINGS = MalSettings(epochs=24)
