"""The one place for class names, input size and the preprocessing id every tool agrees on."""

CLASS_NAMES: tuple[str, ...] = ("normal", "benign", "malignant")
NORMAL_INDEX: int = CLASS_NAMES.index("normal")
MALIGNANT_INDEX: int = CLASS_NAMES.index("malignant")
INPUT_SIZE: int = 224
INPUT_SHAPE: tuple[int, int, int] = (INPUT_SIZE, INPUT_SIZE, 3)
UNCERTAIN_MARGIN: float = 0.2


def preprocessing_id(size: int = INPUT_SIZE) -> str:
    """The id of the shared preprocessing at one input size (the runtime serves INPUT_SIZE)."""
    return f"luma8-exif-bilinear{size}-v2"


PREPROCESSING_ID: str = preprocessing_id()
