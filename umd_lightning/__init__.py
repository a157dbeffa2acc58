"""umd_lightning: does a 3D segmentation model know anatomy, or only CT?"""

__version__ = "0.1.0"
