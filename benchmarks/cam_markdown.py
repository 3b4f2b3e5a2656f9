"""The benchmark report's heat-map section: CAM against the BUSI lesion masks
(benchmarks.cam_eval), as Markdown."""

from __future__ import annotations

import math

CAM_HEADING = "## Heat-maps against the lesion masks (CAM)"


def _figure(block: dict, digits: int = 3) -> str:
    """'0.745 [0.660, 0.830]', or '—' when undefined."""
    mean = block["mean"]
    if mean is None or math.isnan(mean):
        return "—"
    low, high = block["interval_95"]
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _share(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def cam_section(results: dict) -> list[str]:
    """Pointing game and energy inside the mask per map and baseline, int8-vs-Keras agreement,
    and the example overlays."""
    section = results.get("cam")
    lines = [CAM_HEADING, ""]
    if not section or "skipped" in (section or {}):
        reason = (section or {}).get("skipped", "not measured in this run")
        return lines + [f"Not measured: {reason}.", ""]
    counts = ", ".join(f"{n} {c}" for c, n in section["class_counts"].items())
    lines += [f"{section['images']} lesion images of the test split ({counts}; "
              f"{section['images_with_several_masks']} with several masks, used as their union; "
              f"mean mask area {section['mean_mask_area']:.1%} of the image). Model "
              f"`{section['model']}`. Pointing game: the map's maximum lies inside the lesion "
              "mask. Energy: the share of the normalised map inside the mask. 95 % bootstrap "
              "intervals over images. The masks are used for this evaluation only.", ""]
    rows = [[info["description"], _figure(info["pointing"]),
             *(_share(info["pointing_by_class"][c]) for c in section["class_counts"]),
             _figure(info["energy"])]
            for info in section["maps"].values()]
    header = ["map", "pointing game", *(f"pointing, {c}" for c in section["class_counts"]),
              "energy inside mask"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    advantage = section["int8_minus_baseline"]
    lines += ["int8's shown map minus the baselines, image by image (paired bootstrap): "
              f"pointing game {_figure(advantage['pointing_vs_centre'])} against the image "
              f"centre; energy inside the mask {_figure(advantage['energy_vs_gaussian'])} "
              "against the centred Gaussian.", ""]
    agreement = section["int8_vs_keras"]
    lines += [f"int8 against Keras ({agreement['class']}): Pearson correlation mean "
              f"{agreement['pearson_mean']:.3f}, median {agreement['pearson_median']:.3f}, "
              f"lowest {agreement['pearson_min']:.3f}; same peak cell on "
              f"{agreement['same_peak_cell']:.1%} of the images.", "",
              f"Method: {section['method']}.", ""]
    plot = results.get("plots", {}).get("cam_examples")
    if plot:
        lines += [f"![int8 heat-maps with the lesion outline]({plot})", ""]
    return lines
