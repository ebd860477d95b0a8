"""Draw a digit in the browser, and a JSON prediction API:
`python -m alexnet_jax.serve --workdir DIR [--checkpoint best|latest|STEP] [--host 127.0.0.1] [--port 8000]`.

FastAPI on uvicorn (the optional `serve` extra). The checkpoint is loaded once at start (`trained_run`)
and every request goes through `predict`'s own preprocessing and `Predictor`, so the page, the API and the
`alexnet_jax.predict` command give the same answer for the same image.

* `GET /`: a page (no build step, nothing fetched from outside: `inference/static/`) with a canvas to
  draw on (mouse, pen or finger), a file upload, the prediction, the ten probabilities and the 28x28 image
  the network actually sees.
* `POST /api/predict`: PNG or JPEG bytes as the body (`Content-Type: image/png|jpeg`) or a multipart
  upload (field `file`) -> `{digit, probabilities, top_k, preprocessed_png_base64, checkpoint_step}`.
  Bad input gets a 4xx JSON `{"detail": ...}` naming the problem: 400 not an image, 413 over
  `MAX_BYTES` or `MAX_SIDE` pixels a side, 415 another content type, 422 no digit (a blank image).
* `GET /api/health`, and the OpenAPI schema at `/openapi.json` (`/docs` renders it).
"""

from __future__ import annotations

import base64
import io
import os
import sys
import threading
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from alexnet_jax import cli
from alexnet_jax.inference import predict
from alexnet_jax.training import checkpointing

try:
  from fastapi import FastAPI, HTTPException, Request
  from fastapi.concurrency import run_in_threadpool
  from fastapi.responses import FileResponse
  from fastapi.staticfiles import StaticFiles
  from pydantic import BaseModel
except ImportError as e:  # pragma: no cover - depends on what is installed
  raise ImportError(f"alexnet_jax.serve needs the `serve` extra: pip install -e '.[serve]' ({e})") from None

MAX_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4096
IMAGE_TYPES = ("image/png", "image/jpeg")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FLAGS = flags.FLAGS


def png_base64(image: np.ndarray) -> str:
  """A (28, 28, 1) uint8 image as base64 PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
  return base64.b64encode(buffer.getvalue()).decode("ascii")


class Candidate(BaseModel):
  digit: int
  probability: float


class Prediction(BaseModel):
  """The answer of POST /api/predict."""

  digit: int
  probabilities: list[float]
  top_k: list[Candidate]
  preprocessed_png_base64: str
  checkpoint_step: int


class PredictionService:
  """One loaded network behind a lock: concurrent requests run one at a time on its compiled shapes."""

  def __init__(self, predictor: predict.Predictor):
    self.predictor = predictor
    self._lock = threading.Lock()

  def predict_bytes(self, data: bytes, name: str = "upload") -> dict[str, Any]:
    """Raises predict.ImageError (or its ImageTooLargeError) for input that holds no readable digit."""
    if len(data) > MAX_BYTES:
      raise predict.ImageTooLargeError(f"{name}: {len(data):,} bytes, more than {MAX_BYTES:,}")
    image = predict.preprocess(predict.decode_image(data, name, max_side=MAX_SIDE))
    with self._lock:
      probabilities = self.predictor([image], preprocessed=True)[0]
    record = predict.result_record(name, probabilities)
    return {"digit": record["prediction"], "probabilities": record["probabilities"],
            "top_k": record["top3"], "preprocessed_png_base64": png_base64(image),
            "checkpoint_step": self.predictor.checkpoint_step}


def create_app(service: PredictionService) -> FastAPI:
  """The FastAPI application around one loaded network."""
  api = FastAPI(title="alexnet_jax", summary="Handwritten digit recognition with an AlexNet in JAX.")
  api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
  errors = {code: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}
            for code, text in ((400, "not a readable image"), (413, "image too large"),
                               (415, "unsupported content type"), (422, "no digit in the image"))}
  upload_schema = {"type": "string", "format": "binary"}
  request_body = {"required": True, "content": {
      **{kind: {"schema": upload_schema} for kind in IMAGE_TYPES},
      "multipart/form-data": {"schema": {"type": "object", "properties": {"file": upload_schema},
                                         "required": ["file"]}}}}

  @api.get("/", include_in_schema=False)
  def index():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"))

  @api.get("/api/health")
  def health() -> dict[str, Any]:
    return {"status": "ok", "checkpoint_step": service.predictor.checkpoint_step}

  @api.post("/api/predict", response_model=Prediction, responses=errors,
            openapi_extra={"requestBody": request_body})
  async def predict_image(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_BYTES:
      raise HTTPException(413, f"body of {declared:,} bytes, more than {MAX_BYTES:,}")
    if content_type == "multipart/form-data":
      form = await request.form()
      upload = form.get("file")
      if upload is None or isinstance(upload, str):
        raise HTTPException(400, "multipart upload without a file field named 'file'")
      data, name = await upload.read(), upload.filename or "upload"
    elif content_type in IMAGE_TYPES:
      data, name = await request.body(), "body"
    else:
      raise HTTPException(415, f"content type {content_type or 'missing'!r}: send {', '.join(IMAGE_TYPES)} "
                          "bytes or a multipart/form-data upload")
    try:
      return await run_in_threadpool(service.predict_bytes, data, name)
    except predict.ImageTooLargeError as e:
      raise HTTPException(413, str(e)) from None
    except predict.ImageError as e:
      raise HTTPException(422 if "no ink" in str(e) else 400, str(e)) from None

  return api


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. The default serves this machine only; "
                      "--host 0.0.0.0 serves every network this machine is on (your explicit choice).")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  try:
    predictor = predict.load_predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights)
  except checkpointing.CheckpointError as e:
    sys.exit(f"error: {e}")
  import uvicorn  # noqa: PLC0415 - the optional `serve` extra

  print(f"serving {FLAGS.workdir} (checkpoint step {predictor.checkpoint_step}) on "
        f"http://{FLAGS.host}:{FLAGS.port}/", flush=True)
  uvicorn.run(create_app(PredictionService(predictor)), host=FLAGS.host, port=FLAGS.port,
              log_level="warning")


if __name__ == "__main__":
  define_flags()
  app.run(main)
