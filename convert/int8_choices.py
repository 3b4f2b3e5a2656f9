"""The int8 activation-range choices, in a module without TensorFlow so `busi-convert --help`
stays fast: the converter's calibration min / max, or refined (convert.int8_ranges), shipped."""

RANGE_NOTES: dict[str, str] = {
    "minmax": "activation ranges: calibration min / max (the converter's default)",
    "refined": "activation ranges: MSE-optimal on the calibration images, exact input scaling "
               "(convert.int8_ranges)",
}
INT8_RANGES: tuple[str, ...] = tuple(RANGE_NOTES)
DEFAULT_INT8_RANGES = "refined"
