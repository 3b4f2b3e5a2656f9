"""The arm64 check's verdict and report: each emulated-arm64 result file compared with the x86-64
one for the same model, plus the arm64 install footprint and peak memory, written to
docs/arm64.{json,md}. Run by tools/arm64/run.sh, which leaves in RUN_DIR:

  host.<model>.jsonl, arm64.<cpu>.<model>.jsonl   `edge-infer --json` output
  host.<model>.time, arm64.<cpu>.<model>.time     GNU `time -v` of those processes
  host-python.time, arm64-python.time             GNU `time -v` of a bare `python3 -c pass`
  arm64.<cpu>.hwcap                               AT_HWCAP and AT_HWCAP2 seen by the guest
  arm64.<cpu>.cpuinfo                             the /proc/cpuinfo the guest was shown
  arm64-freeze.txt, host-freeze.txt               `pip freeze --all` of each venv
  arm64-serve.healthz.json, arm64-serve.predict.json   (with --serve) the arm64 web app's answers
  meta.tsv, timings.tsv                           key<TAB>value

Exit codes: 0 every comparison agrees; 1 one does not; 2 usage error or unreadable files.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import click

from tools.arm64.compare import (
    DEFAULT_TOLERANCE,
    EXIT_DIFFER,
    EXIT_UNREADABLE,
    ImageResult,
    ResultFileError,
    check_tolerance,
    compare,
    read_results,
)
from tools.arm64.cpuinfo import PI_CPUS, features

# The feature flags that decide which TFLite / XNNPACK kernels run.
KERNEL_FEATURES = ("asimd", "fphp", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16")
# Raspberry Pi OS runs the Pi 5 on a 16 KiB-page kernel: every ELF segment must allow that.
PI5_PAGE_BYTES = 16 * 1024
ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
SEEDED_BY_VENV = ("pip", "setuptools")
VERSIONS_SHOWN = ("ai-edge-litert", "numpy", "pillow", "click", "tqdm")
MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def read_tsv(path: Path) -> dict[str, str]:
    """key<TAB>value lines as a dict (an absent file is empty)."""
    if not path.is_file():
        return {}
    return dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)


def peak_rss_mib(time_file: Path) -> float | None:
    """The peak RSS GNU `time -v` recorded, in MiB (None when absent)."""
    if not time_file.is_file():
        return None
    found = MAX_RSS.search(time_file.read_text())
    return round(int(found.group(1)) / 1024, 1) if found else None


def cpu_features(hwcap_file: Path) -> list[str]:
    """The kernel-selecting CPU features the emulated CPU advertised to the guest."""
    hwcap, hwcap2 = (int(word) for word in hwcap_file.read_text().split())
    return [name for name in features(hwcap, hwcap2) if name in KERNEL_FEATURES]


def load_alignment(path: Path) -> int | None:
    """The smallest p_align of a 64-bit little-endian ELF file's PT_LOAD segments (None if the
    file is not one)."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != ELF_MAGIC or header[4:6] != b"\x02\x01":
            return None
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    aligns = [struct.unpack_from("<Q", table, i * phentsize + 0x30)[0] for i in range(phnum)
              if struct.unpack_from("<I", table, i * phentsize)[0] == PT_LOAD]
    return min(aligns) if aligns else None


def shared_library_alignment(site_packages: Path) -> dict:
    """How many shared libraries a site-packages holds and their smallest segment alignment."""
    aligns = {path.relative_to(site_packages).as_posix(): load_alignment(path)
              for path in site_packages.rglob("*.so*") if path.is_file()}
    aligns = {name: align for name, align in aligns.items() if align is not None}
    smallest = min(aligns.values(), default=None)
    return {"shared_libraries": len(aligns), "smallest_load_alignment": smallest,
            "loads_on_16k_pages": smallest is not None and smallest >= PI5_PAGE_BYTES,
            "below_16k": sorted(name for name, align in aligns.items()
                                if align < PI5_PAGE_BYTES)}


def versions(freeze_file: Path) -> dict[str, str]:
    """Distribution name (lower case) -> version, from `pip freeze` output."""
    pinned = (line.split("==", 1) for line in freeze_file.read_text().splitlines()
              if "==" in line)
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pinned}


def footprint(venv: Path) -> dict:
    """Bytes of a venv's site-packages: total, per distribution (from each RECORD), what the
    venv itself seeds (pip, setuptools), and the shipped models folder."""
    site_packages = next(venv.glob("lib/python3*/site-packages"))
    total = sum(p.stat().st_size for p in site_packages.rglob("*") if p.is_file())
    per_distribution: dict[str, int] = {}
    for record in site_packages.glob("*.dist-info/RECORD"):
        name = record.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        name = name.lower().replace("_", "-")
        sizes = (row.rsplit(",", 1)[-1] for row in record.read_text().splitlines())
        per_distribution[name] = sum(int(size) for size in sizes if size.isdigit())
    models = site_packages / "edge_infer" / "models"
    seeded = sum(per_distribution.get(name, 0) for name in SEEDED_BY_VENV)
    return {"site_packages_bytes": total, "seeded_by_venv_bytes": seeded,
            "installed_by_pip_install_bytes": total - seeded,
            "per_distribution_bytes": dict(sorted(per_distribution.items(),
                                                  key=lambda item: -item[1])),
            "models_folder_bytes": sum(p.stat().st_size for p in models.rglob("*.tflite")),
            "models_folder_files": sorted(p.name for p in models.glob("*.tflite")),
            "elf": shared_library_alignment(site_packages)}


def _model_files(venv: Path) -> dict[str, dict]:
    """Manifest key -> file name and bytes, as installed in the venv."""
    models = next(venv.glob("lib/python3*/site-packages/edge_infer/models"))
    manifest = json.loads((models / "manifest.json").read_text())
    return {key: {"file": entry["file"], "bytes": (models / entry["file"]).stat().st_size}
            for key, entry in manifest["models"].items() if (models / entry["file"]).is_file()}


def serve_check(run_dir: Path, image: str | None, tolerance: float) -> dict | None:
    """The arm64 web app's POST /predict for one image against x86-64 `edge-infer --json` for
    the same image and model (None when the run had no --serve)."""
    answer = run_dir / "arm64-serve.predict.json"
    if not image or not answer.is_file():
        return None
    served = next(iter(read_results(answer).values()))
    host = read_results(run_dir / "host.int8.jsonl")[image]
    comparison = compare({image: host}, {image: served}, tolerance)
    health = json.loads((run_dir / "arm64-serve.healthz.json").read_text())
    return {"image": image, "healthz": health, "prediction": served.prediction,
            "x86_64_prediction": host.prediction, **comparison.to_dict()}


def _image_entry(per_image: dict[str, dict], name: str) -> dict:
    """The per-image record of `name` (its label is its BUSI class folder)."""
    return per_image.setdefault(name, {"file": name, "label": name.split("/")[0],
                                       "x86_64": {}, "arm64": {}})


def _outcome(result: ImageResult) -> dict:
    return {"prediction": result.prediction, "probs": list(result.probs)}


def build_report(run_dir: Path, arm64_venv: Path, tolerance: float) -> dict:
    """Every comparison of the run plus the footprint, memory, versions and timings."""
    host_files = sorted(run_dir.glob("host.*.jsonl"))
    if not host_files:
        raise ResultFileError(f"{run_dir} holds no host.<model>.jsonl")
    installed = _model_files(arm64_venv)
    comparisons, per_image = [], {}
    for host_file in host_files:
        model = host_file.name.split(".")[1]
        host = read_results(host_file)
        key = json.loads(host_file.read_text().splitlines()[0])["model"]["key"]
        for name, result in host.items():
            _image_entry(per_image, name)["x86_64"][model] = _outcome(result)
        arm_files = sorted(run_dir.glob(f"arm64.*.{model}.jsonl"))
        if not arm_files:
            raise ResultFileError(f"{run_dir} holds no arm64.<cpu>.{model}.jsonl")
        for arm_file in arm_files:
            cpu = arm_file.name.split(".")[1]
            arm = read_results(arm_file)
            for name, result in arm.items():
                _image_entry(per_image, name)["arm64"].setdefault(cpu, {})[model] = \
                    _outcome(result)
            comparison = compare(host, arm, tolerance)
            hwcap_file = run_dir / f"arm64.{cpu}.hwcap"
            comparisons.append({
                "model": model, "model_key": key, "model_bytes": installed[key]["bytes"],
                "cpu": cpu, "stands_for": PI_CPUS[cpu][0] if cpu in PI_CPUS else cpu,
                "cpu_features": cpu_features(hwcap_file) if hwcap_file.is_file() else None,
                **comparison.to_dict(),
                "peak_rss_mib": {
                    "arm64_emulated": peak_rss_mib(run_dir / f"arm64.{cpu}.{model}.time"),
                    "x86_64": peak_rss_mib(run_dir / f"host.{model}.time")}})
    meta = read_tsv(run_dir / "meta.tsv")
    serve = serve_check(run_dir, meta.get("serve_image"), tolerance)
    return {
        "date": meta.get("date"),
        "agrees": all(c["agrees"] for c in comparisons) and (serve is None or serve["agrees"]),
        "identical_predictions": all(c["identical_predictions"] for c in comparisons),
        "max_abs_diff": max(c["max_abs_diff"] for c in comparisons),
        "tolerance": tolerance,
        "images": len(per_image),
        "images_list": meta.get("images_list"),
        "comparisons": comparisons,
        "serve": serve,
        "footprint_arm64": footprint(arm64_venv),
        "bare_python_peak_rss_mib": {
            "arm64_emulated": peak_rss_mib(run_dir / "arm64-python.time"),
            "x86_64": peak_rss_mib(run_dir / "host-python.time")},
        "versions": {"arm64": versions(run_dir / "arm64-freeze.txt"),
                     "x86_64": versions(run_dir / "host-freeze.txt")},
        "environment": {key: value for key, value in meta.items()
                        if key not in ("date", "total_seconds", "images_list")},
        "check_wall_clock_seconds": {**{k: int(v) for k, v in
                                        read_tsv(run_dir / "timings.tsv").items()},
                                     "total": int(meta.get("total_seconds", 0))},
        "per_image": [per_image[name] for name in sorted(per_image)],
    }


def _mb(value: int) -> str:
    return f"{value / 1e6:.1f} MB"


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def render_markdown(report: dict) -> str:
    """The report as a person reads it."""
    env, foot = report["environment"], report["footprint_arm64"]
    lines = [
        "# arm64 (Raspberry Pi) check",
        "",
        f"Last run {report['date']} by `tools/arm64/run.sh`: Debian "
        f"{env.get('debian_arm64', '?')} arm64 under {env.get('qemu', 'qemu-user')}, "
        f"{env.get('arm64_python', '')}; reference: the same install on x86-64 "
        f"({env.get('host_cpu', '?')}). {report['images']} BUSI test images "
        f"(`{report['images_list']}`).",
        "",
        f"**Verdict: {'the arm64 results agree with x86-64' if report['agrees'] else 'DIFFERENT'}"
        f"** — identical predictions: {_yes(report['identical_predictions'])}; largest "
        f"|Δprob| {report['max_abs_diff']:.6g} (tolerance {report['tolerance']:g}).",
        "",
        "| model | sha256 | emulated CPU (features) | images | identical predictions | "
        "max \\|Δprob\\| | images with any Δ |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report["comparisons"]:
        features = ", ".join(c["cpu_features"] or [])
        lines.append(
            f"| {c['model_key']} ({_mb(c['model_bytes'])}) | `{c['model_sha256'][0][:12]}…` | "
            f"{c['cpu']} = {c['stands_for']} ({features}) | {c['images']} | "
            f"{_yes(c['identical_predictions'])} | {c['max_abs_diff']:.3g} | "
            f"{c['images_with_any_diff']} |")
    problems = [f"- {c['model']} on {c['cpu']}: {p}" for c in report["comparisons"]
                for p in c["problems"]]
    lines += ["", *(["Problems:", *problems, ""] if problems else [])]
    serve = report.get("serve")
    if serve:
        lines += [f"Web app on arm64 (`pip install \".[serve]\"`, `edge-infer serve --host "
                  f"0.0.0.0 --workers 2 --threads 2`): /healthz answered "
                  f"`{json.dumps(serve['healthz'])}`; POST /predict of `{serve['image']}` gave "
                  f"{serve['prediction']} (x86-64 edge-infer: {serve['x86_64_prediction']}), "
                  f"|Δprob| {serve['max_abs_diff']:.3g}: "
                  f"{'agrees' if serve['agrees'] else '**differs**'}.", ""]
    if env.get("skipped_models"):
        lines += [f"Not compared: {env['skipped_models']} (edge-infer could not load it when "
                  "the check ran, e.g. its file was being regenerated).", ""]
    rss = [f"{c['model']}: {c['peak_rss_mib']['arm64_emulated']} MiB emulated arm64 "
           f"({c['cpu']}), {c['peak_rss_mib']['x86_64']} MiB x86-64"
           for c in report["comparisons"]]
    bare = report["bare_python_peak_rss_mib"]
    arm_versions, host_versions = report["versions"]["arm64"], report["versions"]["x86_64"]
    lines += [
        "## Footprint on arm64",
        "",
        f"- site-packages of the venv after `pip install .`: {_mb(foot['site_packages_bytes'])}, "
        f"of which {_mb(foot['seeded_by_venv_bytes'])} is pip and setuptools (seeded by "
        f"`python3 -m venv`), {_mb(foot['installed_by_pip_install_bytes'])} the rest.",
        "- per distribution: " + ", ".join(f"{name} {_mb(size)}" for name, size in
                                            foot["per_distribution_bytes"].items()
                                            if size >= 100_000) + ".",
        f"- the installed models folder: {_mb(foot['models_folder_bytes'])} "
        f"({', '.join(foot['models_folder_files'])}).",
        f"- {foot['elf']['shared_libraries']} shared libraries, smallest ELF segment alignment "
        f"{(foot['elf']['smallest_load_alignment'] or 0) // 1024} KiB: "
        + ("all load on the Pi 5's 16 KiB-page kernel." if foot["elf"]["loads_on_16k_pages"]
           else f"**below 16 KiB, will not load on a Pi 5 kernel**: {foot['elf']['below_16k']}."),
        "",
        "## Peak RSS of one `edge-infer` process",
        "",
        "Classifying all the images in one process (GNU `time -v`). Under qemu-user the figure "
        "includes the emulator's own memory (translated-code cache), so the arm64 number is an "
        "upper bound; the native x86-64 number, same libraries and model, is the better guide to "
        "a Pi.",
        "",
        *(f"- {line}" for line in rss),
        f"- a bare `python3 -c pass`: {bare['arm64_emulated']} MiB emulated arm64, "
        f"{bare['x86_64']} MiB x86-64 (the emulator's fixed cost).",
        "",
        "## Versions (the x86-64 install is pinned to the arm64 one)",
        "",
        *(f"- {name}: arm64 {arm_versions.get(name, '—')}, x86-64 {host_versions.get(name, '—')}"
          for name in VERSIONS_SHOWN),
        "",
        "## Wall clock of this check (emulation; NOT Raspberry Pi latency)",
        "",
        f"Root file system {'cached' if env.get('rootfs_cached') == '1' else 'built'}; "
        "seconds per phase: " + ", ".join(
            f"{phase} {seconds}" for phase, seconds in
            report["check_wall_clock_seconds"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--arm64-venv", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The venv inside the arm64 root file system (for the footprint).")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="Largest allowed |difference| of any class probability.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write OUT.json and OUT.md (e.g. docs/arm64).")
def main(run_dir: Path, arm64_venv: Path, tolerance: float, out: Path | None) -> None:
    """Compare a run of tools/arm64/run.sh and print (and write) its report."""
    try:
        report = build_report(run_dir, arm64_venv, check_tolerance(tolerance))
    except (ResultFileError, OSError, StopIteration, KeyError) as err:
        click.echo(f"error: {err!r}", err=True)
        sys.exit(EXIT_UNREADABLE)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--tolerance") from None
    markdown = render_markdown(report)
    click.echo(markdown)
    if out:
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown)
    if not report["agrees"]:
        sys.exit(EXIT_DIFFER)


if __name__ == "__main__":
    main()
