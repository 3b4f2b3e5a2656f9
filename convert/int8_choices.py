"""The int8 activation-range choices: the converter's calibration min / max, or refined
(convert.int8_ranges; the default, and how the shipped int8 was made). No TensorFlow import
here, so `python -m busi convert --help` stays fast."""

RANGE_NOTES: dict[str, str] = {
    "minmax": "activation ranges: calibration min / max (the converter's default)",
    "refined": "activation ranges: MSE-optimal on the calibration images, exact input scaling "
               "(convert.int8_ranges)",
}
INT8_RANGES: tuple[str, ...] = tuple(RANGE_NOTES)
DEFAULT_INT8_RANGES: str = "refined"
