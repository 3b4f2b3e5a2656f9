"use strict";
// Upload page for busi-edge: posts the image to /predict and shows the JSON result.

const $ = (id) => document.getElementById(id);
const form = $("form");
const fileInput = $("file");
const threshold = $("threshold");
const tokenInput = $("token");
const TOKEN_KEY = "busi-edge-token";
let maxUploadBytes = null;
let previewUrl = null;
let latest = 0; // only the newest request's answer is shown

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const points = (p) => `${(100 * p).toFixed(1)} points`;
const capitalized = (text) => text.charAt(0).toUpperCase() + text.slice(1);

function humanSize(bytes) {
  if (bytes >= 1 << 20) return `${+(bytes / (1 << 20)).toPrecision(3)} MiB`;
  if (bytes >= 1 << 10) return `${+(bytes / (1 << 10)).toPrecision(3)} KiB`;
  return `${bytes} bytes`;
}

function authHeaders() {
  // `edge-infer serve --token`: typed once, kept in this browser, sent with every API call.
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function selectedMode() {
  return form.querySelector('input[name="mode"]:checked').value;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("result").hidden = true;
}

function errorText(body, status) {
  // FastAPI answers {"detail": "..."} or, for invalid fields, {"detail": [{loc, msg}, ...]}.
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
  }
  return `the server answered ${status}`;
}

function renderBars(result) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, prob] of Object.entries(result.probs)) {
    const row = document.createElement("div");
    row.className = name === result.argmax_prediction ? "bar-row top" : "bar-row";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = `bar-fill ${name}`;
    fill.style.width = percent(prob);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(prob);
    row.append(label, track, value);
    bars.append(row);
  }
}

function forcedSentence(r) {
  if (r.forced_malignant) {
    return `The malignant probability (${percent(r.prob_malignant)}) reached the ` +
      `high-sensitivity threshold (${percent(r.threshold)}), so the image is labelled ` +
      `malignant although ${r.argmax_prediction} was more probable.`;
  }
  if (r.mode === "argmax") {
    return "Not forced: in this mode the label is always the most probable class.";
  }
  if (r.argmax_prediction === "malignant") {
    return "Not forced: malignant is already the most probable class.";
  }
  return `Not forced: the malignant probability (${percent(r.prob_malignant)}) is below the ` +
    `threshold (${percent(r.threshold)}), so the label is the most probable class.`;
}

function uncertainSentence(r) {
  const [first, second] = r.top2;
  if (r.uncertain) {
    return `${capitalized(first.label)} leads ${second.label} by only ${points(r.margin)}: ` +
      "the model barely prefers its answer, so treat this image as undecided.";
  }
  return `${capitalized(first.label)} leads ${second.label} by ${points(r.margin)}: the ` +
    "model clearly prefers its answer, though it can still be wrong.";
}

function setBadge(id, on) {
  $(id).textContent = on ? "yes" : "no";
  $(id).className = on ? "badge yes" : "badge";
}

function oodSentence(r) {
  // in_distribution: false = not like the breast ultrasound the model knows; null = unchecked.
  if (r.in_distribution !== false) return "";
  if (r.domain_warning) return `Labelled, but ${r.ood_reasons.join("; ")}.`;
  return `This image does not look like a breast ultrasound (${r.ood_reasons.join("; ")}). ` +
    "The class probabilities below should not be trusted. " +
    (r.refused ? "No label is given." : "It is labelled anyway, as asked: treat it as a guess.");
}

function render(result) {
  $("error").hidden = true;
  $("ood-alert").textContent = oodSentence(result);
  $("ood-alert").hidden = result.in_distribution !== false;
  $("prediction").textContent = result.refused ? "No label" : result.prediction;
  $("prediction").className = `prediction ${result.refused ? "refused" : result.prediction}`;
  renderBars(result);
  setBadge("forced", result.forced_malignant);
  $("forced-text").textContent = forcedSentence(result);
  setBadge("uncertain", result.uncertain);
  $("uncertain-text").textContent = uncertainSentence(result);
  const mode = result.mode === "argmax" ? "argmax" :
    `high-sensitivity, threshold ${result.threshold.toFixed(3)}`;
  $("meta").textContent = `${result.file} · ${mode} · model ${result.model.key} ` +
    `(sha256 ${result.model.sha256.slice(0, 12)}…)`;
  renderHeatmap(result.heatmap);
  $("result").dataset.file = result.file;
  $("result").hidden = false;
}

function renderHeatmap(heatmap) {
  // Present only when asked for: the upload with the predicted class's map overlaid.
  $("heatmap-figure").hidden = !heatmap;
  if (heatmap) {
    $("heatmap-image").src = heatmap.png;
    $("heatmap-label").textContent = heatmap.label;
  } else {
    $("heatmap-image").removeAttribute("src");
  }
}

async function classify() {
  const file = fileInput.files[0];
  if (!file) return;
  if (maxUploadBytes !== null && file.size > maxUploadBytes) {
    showError(`${file.name} is ${humanSize(file.size)}; the limit is ${humanSize(maxUploadBytes)}.`);
    return;
  }
  const body = new FormData();
  body.append("file", file);
  body.append("mode", selectedMode());
  if (selectedMode() === "high-sensitivity" && threshold.value !== "") {
    body.append("threshold", threshold.value);
  }
  if ($("heatmap").checked) body.append("heatmap", "true");
  if ($("ood-warn").checked) body.append("ood", "warn");
  const ticket = ++latest;
  const button = form.querySelector("button");
  button.textContent = "Classifying…";
  try {
    const response = await fetch("/predict", { method: "POST", body, headers: authHeaders() });
    const json = await response.json().catch(() => null);
    if (ticket !== latest) return;
    if (response.status === 401) {
      $("token-field").hidden = false;
      showError("This server needs its access token: type it in the Access token field.");
    } else if (!response.ok) {
      showError(`Could not classify ${file.name}: ${errorText(json, response.status)}`);
    } else {
      render(json);
    }
  } catch (err) {
    if (ticket === latest) showError(`Could not reach the server: ${err.message}`);
  } finally {
    if (ticket === latest) button.textContent = "Classify";
  }
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  if (!file) return;
  $("file-name").textContent = file.name;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  classify();
});

form.addEventListener("change", (event) => {
  if (event.target.name === "mode") {
    threshold.disabled = selectedMode() !== "high-sensitivity";
    classify();
  } else if (event.target === tokenInput) {
    localStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
    loadModel();
    classify();
  } else if (event.target === threshold || ["heatmap", "ood-warn"].includes(event.target.id)) {
    classify();
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  classify();
});

fetch("/healthz").then((r) => r.json()).then((health) => {
  maxUploadBytes = health.max_upload_bytes;
  $("token-field").hidden = !health.token_required;
  tokenInput.value = localStorage.getItem(TOKEN_KEY) || "";
  $("limits").textContent = `Images up to ${humanSize(maxUploadBytes)} ` +
    "(PNG, JPEG, BMP, TIFF, WebP, GIF). Model: " + health.model + ".";
}).catch(() => {});

function loadModel() {
  fetch("/model", { headers: authHeaders() }).then((r) => r.json()).then((model) => {
    threshold.placeholder = model.threshold.toFixed(2);
    threshold.title = `Default ${model.threshold.toFixed(3)}: ${model.threshold_rule || ""}`;
  }).catch(() => {});
}

loadModel();
