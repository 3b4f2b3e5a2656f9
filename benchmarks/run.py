"""One benchmark run of an architecture: every variant's test accuracy, latency, cold start,
memory and size, side by side with the Keras model it came from."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.accuracy import variant_accuracy
from benchmarks.calibration_report import (
    calibrated_predictor,
    calibration_results,
    site_section,
    spec_calibrations,
)
from benchmarks.cam_eval import benchmark_cam
from benchmarks.coldstart import measure_cold_start
from benchmarks.external import VARIANTS as EXTERNAL_VARIANTS
from benchmarks.external import external_results
from benchmarks.fidelity import fidelity_results
from benchmarks.latency import run_worker
from benchmarks.machine import machine_info
from benchmarks.onnx_variant import OnnxUnavailable, export_fp32, quantize_int8
from benchmarks.ood_eval import bus_bra_if_present, ood_results
from benchmarks.sites import committed_table, load_sets
from benchmarks.targets import check_targets, latency_ratios, resource_ratios
from benchmarks.variants import KerasRunner, OnnxRunner, TFLiteRunner, VariantSpec
from edge_infer.calibration import apply_temperature, fit_calibration
from edge_infer.manifest import MANIFEST_FILENAME, SPLIT_FILENAME, read_manifest, resolve_model
from edge_infer.spec import CLASS_NAMES
from edge_infer.splits import load_images, split_files

SCHEMA_VERSION = 1
TFLITE_VARIANTS: tuple[str, ...] = ("float32", "float16", "int8")
ONNX_CHECK_IMAGES = 8
MANIFEST_THRESHOLD = ("manifest (highest T with malignant recall >= 0.95 on the calibrated "
                      "validation probabilities)")
ONNX_THRESHOLD = ("temperature and threshold fitted here on the validation split "
                  "(edge_infer.calibration.fit_calibration)")


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full run, or a quick one that only proves the code works."""

    quick: bool
    warmup: int
    runs: int
    resamples: int
    cold_repeats: int
    stride: int  # every stride-th image of the test and validation splits
    external_stride: int  # every stride-th image of the external test set
    threads: tuple[int, ...] = (1, 2)
    accuracy_threads: int = 2

    def with_overrides(self, threads: tuple[int, ...] | None, runs: int | None) -> Settings:
        """These settings with the command line's thread counts and run count, if given."""
        return replace(self, threads=threads or self.threads, runs=runs or self.runs)


FULL = Settings(quick=False, warmup=10, runs=200, resamples=1000, cold_repeats=3, stride=1,
                external_stride=1)
# external_stride 5: each half of the site-profile simulation keeps >= 5 malignant and >= 5 other
# images, the least a site profile is fitted from (edge_infer.site_profile)
QUICK = Settings(quick=True, warmup=2, runs=5, resamples=100, cold_repeats=1, stride=10,
                 external_stride=5)


def manifest_variants(arch: str, manifest_file: Path) -> tuple[dict[str, VariantSpec], dict]:
    """An architecture's Keras and TFLite models (sha256-checked), and those it lacks."""
    models = read_manifest(manifest_file)["models"]
    specs, skipped = {}, {}
    keras_entry = resolve_model(f"{arch}/keras", manifest_file)
    specs["keras"] = VariantSpec("keras", "keras", "float32", str(keras_entry.path),
                                 keras_entry.threshold, MANIFEST_THRESHOLD, keras_entry.key,
                                 str(manifest_file), keras_entry.info.get("temperature"))
    for variant in TFLITE_VARIANTS:
        name, key = f"tflite-{variant}", f"{arch}/{variant}"
        if key not in models:
            skipped[name] = f"{key} is not in the manifest (not converted, or missed its targets)"
            continue
        entry = resolve_model(key, manifest_file)
        specs[name] = VariantSpec(name, "tflite", variant, str(entry.path), entry.threshold,
                                  MANIFEST_THRESHOLD, key, str(manifest_file),
                                  entry.info.get("temperature"))
    return specs, skipped


def load_data(root: Path, split_file: Path, stride: int) -> dict:
    """Test and validation images (every stride-th), labels and file paths."""
    data = {}
    for split in ("test", "val"):
        rows = split_files(split, split_file)[::stride]
        images, labels = load_images(rows, root, desc=split)
        data[split] = {"images": images, "labels": labels,
                       "files": [str(root / row.file) for row in rows]}
    return data


def onnx_variants(model, workdir: Path, data: dict, threads: int, specs: dict,
                  probs: dict) -> tuple[dict, dict]:
    """Add ONNX fp32 and int8 to specs and (raw test) probs, each with a temperature and
    threshold fitted on validation; returns how each was made, why not."""
    val = data["val"]
    notes, skipped, made = {}, {}, []
    try:
        fp32 = workdir / "model-float32.onnx"
        notes["float32"] = export_fp32(model, fp32, val["images"][:ONNX_CHECK_IMAGES])
        made.append(("onnx-float32", "float32", fp32))
        int8 = workdir / "model-int8.onnx"
        notes["int8"] = quantize_int8(fp32, int8, val["images"])
        made.append(("onnx-int8", "int8", int8))
    except OnnxUnavailable as err:
        missing = ["onnx-int8"] if made else ["onnx-float32", "onnx-int8"]
        skipped = {name: str(err) for name in missing}
    for name, precision, path in made:
        spec = VariantSpec(name, "onnx", precision, str(path), 0.0, ONNX_THRESHOLD)
        runner = OnnxRunner(spec, threads)
        fit = fit_calibration(runner.predict(val["images"]), val["labels"])
        specs[name] = replace(spec, threshold=fit.threshold, temperature=fit.temperature)
        probs[name] = runner.predict(data["test"]["images"])
    return notes, skipped


def _file_facts(spec: VariantSpec) -> dict:
    path = Path(spec.path)
    return {"runtime": spec.runtime, "precision": spec.precision, "file": path.name,
            "bytes": path.stat().st_size, "threshold": spec.threshold,
            "threshold_source": spec.threshold_source}


def measure_latency(specs: dict[str, VariantSpec], settings: Settings, files: list[str],
                    progress: tqdm) -> dict:
    """Every variant at every thread count, each in a fresh process."""
    latency: dict = {"threads": list(settings.threads), "rows": {}}
    for name, spec in specs.items():
        for threads in settings.threads:
            progress.set_postfix_str(f"latency {name} x{threads}")
            measured = run_worker(spec.to_dict(), threads, files, settings.warmup, settings.runs)
            for row, stats in measured.items():
                latency["rows"].setdefault(row, {"variant": name, "by_threads": {}})
                latency["rows"][row]["by_threads"][str(threads)] = stats
            progress.update()
    return latency


def run_benchmark(settings: Settings, arch: str | None, root: Path, models: Path,
                  command: str, external: Path | None = None,
                  external_missing: str = "no external test set given") -> dict:
    """Measure everything and return the results (the content of latest.json, minus plots).
    `external`: the BrEaST-Lesions_USG folder (test only), or None to skip that section
    (`external_missing` says why)."""
    import keras

    started = time.perf_counter()
    machine = machine_info()
    manifest_file = models / MANIFEST_FILENAME
    arch = arch or read_manifest(manifest_file).get("default_arch")
    if not arch:
        raise ValueError(f"{manifest_file} names no default architecture: pass --arch")
    specs, skipped = manifest_variants(arch, manifest_file)
    progress = tqdm(total=4, desc="benchmark", unit="step", file=sys.stderr)
    progress.set_postfix_str("images")
    data = load_data(root, models / SPLIT_FILENAME, settings.stride)
    test = data["test"]
    progress.update()
    progress.set_postfix_str("keras + tflite accuracy")
    model = keras.models.load_model(specs["keras"].path)
    runners = {"keras": KerasRunner(specs["keras"], model=model)}
    runners.update({name: TFLiteRunner(spec, settings.accuracy_threads)
                    for name, spec in specs.items() if spec.runtime == "tflite"})
    raw_probs = {name: runner.predict(test["images"]) for name, runner in runners.items()}
    probs = {name: apply_temperature(p, specs[name].temperature) for name, p in raw_probs.items()}
    progress.update()
    progress.set_postfix_str("external hospital")
    external_section = {"skipped": external_missing}
    if external is not None:
        chosen = [name for name in EXTERNAL_VARIANTS if name in runners]
        external_section = external_results(
            external, settings.external_stride,
            {name: calibrated_predictor(runners[name].predict, specs[name].temperature)
             for name in chosen},
            {name: specs[name].threshold for name in chosen}, test["labels"], probs,
            settings.resamples)
    fidelity = {"skipped": external_missing if external is None else "no int8 model"}
    if bus_bra_if_present() is None:
        fidelity = {"skipped": "BUS-BRA is not here"}
    elif external is not None and "tflite-int8" in runners:
        fidelity = fidelity_results(load_sets(settings.external_stride),
                                    runners["keras"].predict, runners["tflite-int8"].predict)
    site_simulation = ({"skipped": external_missing} if external is None else
                       site_section(external, settings.external_stride, runners,
                                    settings.resamples))
    progress.set_postfix_str("heat-maps vs lesion masks")
    heatmaps = benchmark_cam(arch, manifest_file, root, test["files"], test["labels"], model,
                             settings.accuracy_threads, settings.resamples)
    progress.set_postfix_str("out-of-distribution check")
    ood = ood_results(arch, manifest_file, root, external, bus_bra_if_present(),
                      settings.stride, settings.accuracy_threads)
    progress.update()
    with tempfile.TemporaryDirectory(prefix="busi-bench-") as workdir:
        progress.set_postfix_str("onnx export + int8")
        onnx_notes, onnx_skipped = onnx_variants(model, Path(workdir), data,
                                                 settings.accuracy_threads, specs, raw_probs)
        probs.update({name: apply_temperature(raw_probs[name], specs[name].temperature)
                      for name in raw_probs if name not in probs})
        skipped.update(onnx_skipped)
        variants = {name: {**_file_facts(spec),
                           "accuracy": variant_accuracy(test["labels"], probs[name],
                                                        spec.threshold, probs["keras"],
                                                        settings.resamples),
                           "test_probs": np.round(probs[name], 6).tolist()}
                    for name, spec in specs.items()}
        progress.update()
        progress.total += len(specs) * (len(settings.threads) + 1)
        latency = measure_latency(specs, settings, test["files"], progress)
        for name, spec in specs.items():
            progress.set_postfix_str(f"cold start {name}")
            variants[name]["cold_start"] = measure_cold_start(
                spec.to_dict(), test["files"][0], max(settings.threads), settings.cold_repeats)
            progress.update()
    progress.close()
    machine["load_average_at_end"] = machine_info()["load_average_1_5_15"]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "arch": arch,
        "settings": asdict(settings),
        "machine": machine,
        "data": {"test_images": len(test["files"]), "val_images": len(data["val"]["files"]),
                 "class_counts": {c: int((test["labels"] == i).sum())
                                  for i, c in enumerate(CLASS_NAMES)},
                 "busi_dir": str(root), "test_files": [Path(f).relative_to(root).as_posix()
                                                        for f in test["files"]],
                 "test_labels": test["labels"].tolist()},
        "variants": variants,
        "external": external_section,
        "fidelity": fidelity,
        "calibration": calibration_results(raw_probs, test["labels"], spec_calibrations(specs),
                                           settings.resamples),
        "site_simulation": site_simulation,
        "cam": heatmaps,
        "ood": ood,
        "sites": committed_table(),
        "skipped": skipped,
        "onnx": onnx_notes,
        "latency": latency,
        "ratios": {"latency": latency_ratios(latency), "resources": resource_ratios(variants)},
        "targets": check_targets(variants, latency),
        "duration_s": time.perf_counter() - started,
    }
