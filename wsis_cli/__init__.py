"""wsis: weakly supervised instance segmentation from the command line.

Importing this package must stay cheap: no torch, cv2, h5py or pycocotools here.
"""

__version__ = "0.1.0"
