"""edge_runtime: run edgetl image classifiers on a device, without TensorFlow.

Importing this package is cheap: the interpreter, OpenCV and Pillow load only when used.

    from edge_runtime import Classifier
    clf = Classifier("model_int8.tflite", num_threads=2)
    clf.classify_path("photo.jpg")        # -> [Prediction(label, index, score), ...]
"""

__version__ = "0.1.0"

__all__ = ["Classifier", "Prediction", "EdgetlError", "__version__"]


def __getattr__(name):
    if name in ("Classifier", "Prediction"):
        from . import classifier

        return getattr(classifier, name)
    if name == "EdgetlError":
        from .errors import EdgetlError

        return EdgetlError
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
