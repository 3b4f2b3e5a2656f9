"""The web app: an upload page and a JSON API over a pool of edge classifiers.

Results use the CLI's code path and schema (decode_image -> Classifier.answer: decision plus
the out-of-distribution check) and inference runs in worker threads, so the event loop is never
blocked and no two requests share an interpreter. `edge-infer serve` runs it.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional, Union

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from edge_infer.cam import png_data_url
from edge_infer.decision import Mode, requested_mode
from edge_infer.ood import OodPolicy
from edge_infer.preprocess import ImageError, NotAnImage
from edge_infer.web.body_limit import TOO_LARGE, BodySizeLimit
from edge_infer.web.defaults import DEFAULT_BODY_TIMEOUT_S
from edge_infer.web.guard import AccessGuard, check_token
from edge_infer.web.limits import RETRY_AFTER_S, Busy, WorkGate, keep_uploads_in_memory
from edge_infer.web.pool import ClassifierPool
from edge_infer.web.schema import ErrorMessage, Health, ManifestEntry, Prediction

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, part headers, mode and threshold
UNSUPPORTED, UNPROCESSABLE, BUSY = 415, 422, 503
QUEUE_PER_WORKER = 16  # requests that may wait for a free worker, per worker (they hold
# only their upload: decoding waits for the slot)
QUEUE_WAIT_S = 30.0
UPLOAD_BUDGET_BYTES = 64 * 2**20  # request bodies held at once, all requests together (at
# least one upload of the largest size)
DESCRIPTION = ("Classify a breast-ultrasound image as normal / benign / malignant. "
               "**A research tool, not a diagnosis**: not validated for clinical use.")


def human_size(size: int) -> str:
    """Bytes as '10 MiB', '64 KiB' or '900 bytes'."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def create_app(model: str = "int8", threads: int = 1, workers: int = 2,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               site: Union[str, os.PathLike, None] = None, token: Optional[str] = None,
               allowed_hosts: Iterable[str] = (),
               body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> FastAPI:
    """The app serving one model from `workers` Classifiers of `threads` interpreter threads,
    calibrated by the site profile `site` if given (else the shipped temperature/threshold);
    `token`, `allowed_hosts`: who may use it (edge_infer/web/guard.py)."""
    token = check_token(token) if token else None  # a short token: refused before any model
    pool = ClassifierPool(model, threads=threads, size=workers, site=site)
    gate = WorkGate(workers, QUEUE_PER_WORKER * workers, QUEUE_WAIT_S)
    too_large = f"upload too large: the limit is {human_size(max_upload_bytes)}"
    keep_uploads_in_memory(max_upload_bytes + FORM_OVERHEAD_BYTES)
    # /docs loads Swagger UI's files from the app, not a CDN; ReDoc (it fetches a logo from
    # cdn.redoc.ly) is off
    app = FastAPIOffline(title="busi-edge", description=DESCRIPTION, redoc_url=None)
    app.state.pool = pool
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD_BYTES,
                       message=too_large, timeout_s=body_timeout_s,
                       budget_bytes=max(UPLOAD_BUDGET_BYTES,
                                        max_upload_bytes + FORM_OVERHEAD_BYTES))
    # outermost: a refused request's body is never read
    app.add_middleware(AccessGuard, token=token, allowed_hosts=tuple(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict:
        """The server is up; which model it serves and its limits."""
        return {"status": "ok", "model": pool.entry.key, "workers": pool.size,
                "max_upload_bytes": max_upload_bytes, "token_required": token is not None,
                **pool.calibration_info}

    @app.get("/model", response_model=ManifestEntry)
    def model_entry() -> dict:
        """The served model's manifest entry."""
        return {"key": pool.entry.key, **pool.entry.info}

    @app.post("/predict", response_model=Prediction, response_model_exclude_unset=True,
              responses={
                  TOO_LARGE: {"model": ErrorMessage, "description": "Upload over the size limit."},
                  UNSUPPORTED: {"model": ErrorMessage,
                                "description": "Not an image Pillow can read."},
                  BUSY: {"model": ErrorMessage,
                         "description": "Every worker busy and the queue full: retry after "
                                        "the Retry-After seconds."},
              })
    async def predict(
        file: Annotated[UploadFile, File(description="The image (PNG, JPEG, TIFF, ...).")],
        mode: Annotated[Optional[Mode], Form(
            description="argmax (default; with a site profile, its mode), or "
                        "high-sensitivity: malignant whenever prob_malignant >= threshold.")]
        = None,
        threshold: Annotated[Optional[float], Form(
            ge=0.0, le=1.0, allow_inf_nan=False,
            description="High-sensitivity threshold (implies that mode); default: the "
                        "model's validated threshold.")] = None,
        heatmap: Annotated[bool, Form(
            description="true: also answer the predicted class's heat-map as a PNG data "
                        "URL (field `heatmap`).")] = False,
        ood: Annotated[OodPolicy, Form(
            description="An image that is not a breast ultrasound: refuse (default) withholds "
                        "the label (prediction null, refused true), warn labels it anyway; "
                        "in_distribution is false either way. A breast scan unlike the "
                        "training hospitals' is labelled, with domain_warning true.")]
        = "refuse",
    ) -> dict:
        """Classify one image. 422: an empty, corrupt or truncated image, or a bad field."""
        try:
            requested_mode(mode, threshold)
        except ValueError as err:
            raise HTTPException(UNPROCESSABLE, str(err)) from None
        if heatmap and not pool.has_heatmap:
            raise HTTPException(UNPROCESSABLE, f"{pool.entry.key} gives no heat-map (no "
                                "feature-map output or head): convert it again")
        data = await file.read()
        if len(data) > max_upload_bytes:
            raise HTTPException(TOO_LARGE, too_large)
        try:  # decoding too runs behind the gate: its memory is bounded by the workers
            answer = await run_in_threadpool(gate.run, pool.predict, data, mode, threshold, ood,
                                             heatmap)
        except Busy as err:
            raise HTTPException(BUSY, str(err), {"Retry-After": str(RETRY_AFTER_S)}) from None
        except NotAnImage as err:
            raise HTTPException(UNSUPPORTED, str(err)) from None
        except ImageError as err:
            raise HTTPException(UNPROCESSABLE, str(err)) from None
        result = {"file": file.filename or "", **answer.to_dict()}
        if answer.heatmap is not None:  # none for a refused image: no evidence for its label
            result["heatmap"] = {"label": answer.prediction, "width": answer.heatmap.width,
                                 "height": answer.heatmap.height,
                                 "png": png_data_url(answer.heatmap)}
        return result

    return app
