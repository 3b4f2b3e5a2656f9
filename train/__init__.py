"""Training of the Keras models (EfficientNetB0 and EfficientNet-Lite0) and the BUSI split."""
