"""crackscope: industrial crack-detection inspection.

Train a pretrained CNN on crack / no-crack patches, export one verified ONNX file that carries its own
preprocessing, heatmap and calibration, and inspect frames with OpenCV and ONNX Runtime.

Example:
    $ crackscope demo
"""

__version__ = "0.1.0"
