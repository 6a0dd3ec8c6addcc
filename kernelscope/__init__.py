"""kernelscope: deployment-time audits of the first convolution layer of image classifiers."""

__version__ = "0.1.0"
