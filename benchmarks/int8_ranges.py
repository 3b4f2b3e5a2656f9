"""`python -m benchmarks.int8_ranges`: does better activation-range calibration buy int8
agreement?

The TFLite converter quantizes each activation tensor over the min..max it saw on the
representative images; a few outliers can stretch that range (EfficientNet's projection
outputs reach +-40 on Lite0, +-185 on B0) and coarsen every other value's step. This study
calibrates as `busi-convert` does, then replaces each range by the one that minimises the mean
squared quantization error of that tensor's values on the same validation images (the range
scaled by a factor in 0.2..1, similar to TensorRT's MSE calibration), quantizes with the
converter's own quantizer, and compares the models with Keras on validation and test. It also
gives the input rescaling (pixel / 128 - 127 / 128 on Lite0, which TFLite runs as MUL then ADD)
the ranges on which it is exact: calibrated, the MUL's range is wider than its values and
rounds the image to about 171 grey levels before the first convolution.
Writes benchmarks/reports/int8_ranges-<arch>.{json,md}; a few minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import click
from tensorflow.lite.tools import flatbuffer_utils

from benchmarks.int8_study import (
    default_note,
    model_label,
    study_inputs,
    study_options,
    tflite_probabilities,
    write_reports,
)
from benchmarks.metrics import agreement
from convert.int8_ranges import (
    quantized,
    recorded_ranges,
    with_exact_input_scaling,
    with_mse_ranges,
)
from convert.tflite import calibrated_model, compacted


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# int8 activation ranges: {results['model']}", "",
             "Full-integer int8 models from the same calibration on the BUSI validation images, "
             "compared with Keras; ranges fitted on validation images only.", "",
             "| ranges | val agreement | test agreement | test max abs Δp | test mean abs Δp |",
             "|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['name']} | {row['val']['agreement']:.3f} | "
                     f"{row['test']['agreement']:.3f} | {row['test']['max_abs_dprob']:.3f} | "
                     f"{row['test']['mean_abs_dprob']:.4f} |")
    lines += ["", f"{len(results['shrunk'])} of {results['tensors']} activation ranges shrank "
              "by more than 5 %.", ""]
    path.write_text("\n".join(lines))


@click.command(help=__doc__)
@study_options("int8_ranges")
def main(arch: str, busi_dir: str | None, out: Path) -> None:
    source, model, data, keras_probs = study_inputs(arch, busi_dir)
    calibrated = calibrated_model(model, data["val"])
    tuned, shrunk = with_mse_ranges(calibrated, data["val"])
    tensor_count = len(recorded_ranges(flatbuffer_utils.convert_bytearray_to_object(tuned)))
    rows = []
    variants = {f"min / max (converter default){default_note('minmax')}": calibrated,
                "min / max, exact input scaling": with_exact_input_scaling(calibrated, model),
                "MSE-optimal": tuned,
                f"MSE-optimal, exact input scaling{default_note('refined')}":
                    with_exact_input_scaling(tuned, model)}
    for name, ranges in variants.items():
        blob = compacted(quantized(ranges))  # as busi-convert writes it
        rows.append({"name": name, "bytes": len(blob),
                     **{split: agreement(keras_probs[split], tflite_probabilities(blob, images))
                        for split, images in data.items()}})
        click.echo(f"{name}: test agreement {rows[-1]['test']['agreement']:.3f}", err=True)
    results = {"model": model_label(arch, source),
               "rows": rows, "tensors": tensor_count, "shrunk": shrunk}
    write_reports(results, out, f"int8_ranges-{arch}", write_markdown)


if __name__ == "__main__":
    main()
