"""``wsis eval``: COCO AP/AR and mean instance IoU."""
