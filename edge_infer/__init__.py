"""busi-edge light runtime: `Classifier(model, site, threads).predict(image) -> Result`.

Importing this package never imports TensorFlow, Keras or scikit-learn.
"""

from edge_infer.classifier import Classifier, Result
from edge_infer.preprocess import ImageError
from edge_infer.spec import CLASS_NAMES

__version__ = "0.2.0"
__all__ = ["CLASS_NAMES", "Classifier", "ImageError", "Result", "__version__"]
