"""Draw a digit in the browser, and a JSON prediction API:
`python -m alexnet_jax.serve --workdir DIR [--checkpoint best|latest|STEP] [--host 127.0.0.1] [--port 8000]`.

FastAPI on uvicorn (the optional `serve` extra). The checkpoint is loaded once at start (`trained_run`)
and every request goes through `predict`'s own preprocessing and `Predictor`, so the page, the API and the
`alexnet_jax.predict` command give the same answer for the same image.

* `GET /`: a page (no build step, nothing fetched from outside: `inference/static/`) with a canvas to
  draw on (mouse, pen or finger), a file upload, the prediction, the ten probabilities and the 28x28 image
  the network actually sees; or, in its number mode, a wide canvas read by `/api/read`, each digit's box
  drawn over it.
* `POST /api/predict`: PNG or JPEG bytes as the body (`Content-Type: image/png|jpeg`) or a multipart
  upload (field `file`) -> `{digit, probabilities, top_k, preprocessed_png_base64, checkpoint_step}`.
  Bad input gets a 4xx JSON `{"detail": ...}` naming the problem: 400 a PNG or JPEG that cannot be decoded
  (or no body, or a malformed upload), 413 over `MAX_BYTES` or `MAX_SIDE` pixels a side, 415 another
  content type or bytes that are not PNG or JPEG (whatever the content type says), 422 no digit (a blank
  image); 503 when `DECODE_SLOTS` images are being decoded and none finishes within `DECODE_WAIT_S`.
* `GET /api/health`, and the OpenAPI schema at `/openapi.json` (`/docs` renders it).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import os
import sys
import threading
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from alexnet_jax import cli
from alexnet_jax.inference import digit_image, number_reader, predict, read_number
from alexnet_jax.training import checkpointing

try:
  import python_multipart  # noqa: F401 - Starlette's multipart parser needs it
  import uvicorn
  from fastapi import FastAPI, HTTPException, Request
  from fastapi.concurrency import run_in_threadpool
  from fastapi.responses import FileResponse
  from fastapi.staticfiles import StaticFiles
  from pydantic import BaseModel, Field
  from starlette.datastructures import Headers
  from starlette.formparsers import MultiPartException, MultiPartParser
  from starlette.requests import ClientDisconnect
except ImportError as e:  # the optional `serve` extra is missing: `require_extra` says so in one line
  MISSING_EXTRA: str | None = (f"error: alexnet_jax.serve needs the `serve` extra ({e}): "
                               "pip install -e '.[serve]'")
  BaseModel = object  # lets this module import, so that the command can say what is missing

  def Field(*_: Any, **__: Any) -> None:  # noqa: N802 - pydantic's, stood in for as BaseModel is
    return None
else:
  MISSING_EXTRA = None

MAX_BYTES = 5 * 1024 * 1024  # an image's encoded bytes
MULTIPART_OVERHEAD = 64 * 1024  # a multipart body may hold this much more: boundaries and part headers
MAX_SIDE = 4096  # pixels a side; larger images are refused before their pixels are decoded
WORK_SIDE = 1024  # larger images are scaled down to this many pixels a side while still 8-bit
IMAGE_TYPES = ("image/png", "image/jpeg")
FORMATS = ("PNG", "JPEG")  # the only formats decoded, whatever the Content-Type says
# Images decoded at once (each holds up to a 4,096-px image's 8-bit pixels); a request over it waits up to
# DECODE_WAIT_S for a slot, then gets 503.
DECODE_SLOTS = 2
DECODE_WAIT_S = 5.0
MAX_LENGTH = 100  # digits POST /api/read?length=N may ask for (read_number's MAX_PIECES bounds the work)
MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond this: bounds the bodies being read at once
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CLOSE = {"Connection": "close"}  # for answers sent before the body was read to its end: drop the rest
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


class DigitInNumber(BaseModel):
  digit: int
  probabilities: list[float]
  box: list[int] = Field(description="[x, y, w, h] of the digit's ink, in the uploaded image's pixels")


class NumberAnswer(BaseModel):
  """The answer of POST /api/read: `read_number`'s reading of the whole image."""

  text: str
  confidence: float = Field(description="the product of the digits' probabilities")
  uncertain: bool = Field(description="the weakest digit's probability is below the threshold")
  digits: list[DigitInNumber]
  checkpoint_step: int


def original_size(data: bytes, decoded: tuple[int, int]) -> tuple[int, int]:
  """(height, width) of the encoded image as shown (its EXIF orientation applied), given the (height, width)
  it was decoded at: only its header is read. A quarter turn swaps the sides; of the two orders, the one
  whose sides are the decoded ones scaled by one factor is it."""
  with Image.open(io.BytesIO(data)) as opened:
    width, height = opened.size
  if max(decoded) == max(width, height):  # not scaled down: the orientation is plain in the decoded shape
    return decoded
  factor = max(width, height) / max(decoded)
  mismatch = abs(decoded[0] * factor - height) + abs(decoded[1] * factor - width)
  swapped = abs(decoded[0] * factor - width) + abs(decoded[1] * factor - height)
  return (height, width) if mismatch <= swapped else (width, height)


def scaled_box(box: tuple[int, int, int, int], factor: int, size: tuple[int, int]) -> list[int]:
  """A box [x, y, w, h] in pixels decoded at 1/`factor` scale (each the average of a `factor` x `factor`
  block: JPEG's draft and Image.reduce both scale by whole blocks) -> the original pixels of those blocks,
  kept inside the original image of `size` (height, width)."""
  x, y, w, h = box
  x1, y1 = min(size[1], (x + w) * factor), min(size[0], (y + h) * factor)
  return [x * factor, y * factor, x1 - x * factor, y1 - y * factor]


class PredictionService:
  """One loaded network behind a lock: concurrent requests run one at a time on its compiled shapes."""

  def __init__(self, predictor: predict.Predictor):
    self.predictor = predictor
    self._lock = threading.Lock()
    # The run's number reader (verifier, priors, threshold) where one is stored; else the priors alone.
    self._network, self._read_options = number_reader.for_predictor(predictor)

  @staticmethod
  def _decode(data: bytes, name: str) -> np.ndarray:
    """The upload in greyscale, decoded within the server's limits (bytes, formats, pixels: at most
    WORK_SIDE a side); digit_image.ImageError (or ImageTooLargeError, UnsupportedFormatError) if not."""
    if len(data) > MAX_BYTES:
      raise digit_image.ImageTooLargeError(f"{name}: {len(data):,} bytes, more than {MAX_BYTES:,}")
    return digit_image.decode_image(data, name, max_side=MAX_SIDE, formats=FORMATS, work_side=WORK_SIDE)

  def predict_bytes(self, data: bytes, name: str = "upload") -> dict[str, Any]:
    """Raises digit_image.ImageError (or its ImageTooLargeError, UnsupportedFormatError) for input that holds
    no readable digit."""
    image = digit_image.preprocess(self._decode(data, name))
    with self._lock:
      probabilities = self.predictor([image], preprocessed=True)[0]
    record = predict.result_record(name, probabilities)
    return {"digit": record["prediction"], "probabilities": record["probabilities"],
            "top_k": record["top3"], "preprocessed_png_base64": png_base64(image),
            "checkpoint_step": self.predictor.checkpoint_step}

  def read_bytes(self, data: bytes, name: str = "upload", length: int | None = None) -> dict[str, Any]:
    """The image read as a string of digits (exactly `length` of them where given); boxes in its own
    pixels. Raises digit_image.ImageError as `predict_bytes` does (a blank image: "no ink"), and where the
    ink cannot be split into `length` digits."""
    grey = self._decode(data, name)  # at most WORK_SIDE a side: the boxes are scaled back below

    def probabilities(images: np.ndarray):  # the network, one request at a time
      with self._lock:
        return self._network(images)

    reading = read_number.read_number(grey, probabilities, **self._read_options, length=length).to_dict()
    size = original_size(data, grey.shape[:2])
    if size != grey.shape[:2]:
      # The decoded side is ceil(side / factor), factor a whole number up to MAX_SIDE / (WORK_SIDE / 2): the
      # ratio of the longest sides rounds to it.
      factor = round(max(size) / max(grey.shape[:2]))
      for digit in reading["digits"]:
        digit["box"] = scaled_box(digit["box"], factor, size)
    return {**reading, "checkpoint_step": self.predictor.checkpoint_step}


def length_of(request: Request) -> int | None:
  """The `length` query parameter of POST /api/read; 400 unless a whole number from 1 to MAX_LENGTH."""
  value = request.query_params.get("length")
  if value is None:
    return None
  if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LENGTH:  # "²".isdigit() too
    raise HTTPException(400, f"length {value[:20]!r}: give a whole number of digits from 1 to {MAX_LENGTH}")
  return int(value)


async def read_body(request: Request, limit: int) -> bytes:
  """The request's body, refused with 413 as soon as it passes `limit` bytes, whether or not it declared a
  length (a chunked body is read as it arrives): never more than `limit` + 1 bytes are held."""
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > limit:
    raise HTTPException(413, f"body of {int(declared):,} bytes, more than {limit:,}", headers=CLOSE)
  body = bytearray()
  try:
    async for chunk in request.stream():
      body += chunk[:limit + 1 - len(body)]
      if len(body) > limit:
        raise HTTPException(413, f"body of more than {limit:,} bytes", headers=CLOSE)
  except ClientDisconnect:
    raise HTTPException(400, "the client closed the connection before the end of the body") from None
  return bytes(body)


async def multipart_file(headers: Headers, body: bytes) -> tuple[bytes, str]:
  """The bytes and file name of the field `file` of a multipart body already read (bounded) in full."""
  async def chunks():
    yield body

  try:
    form = await MultiPartParser(headers, chunks(), max_files=1, max_fields=16).parse()
  except MultiPartException as e:
    raise HTTPException(400, f"malformed multipart upload: {e.message}") from None
  try:
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
      raise HTTPException(400, "multipart upload without a file field named 'file'")
    return await upload.read(), upload.filename or "upload"
  finally:
    await form.close()


def require_extra() -> None:
  """Exits with one line naming the extra to install when the `serve` extra is missing."""
  if MISSING_EXTRA is not None:
    sys.exit(MISSING_EXTRA)


def create_app(service: PredictionService) -> FastAPI:
  """The FastAPI application around one loaded network."""
  if MISSING_EXTRA is not None:
    raise ImportError(MISSING_EXTRA.removeprefix("error: "))
  api = FastAPI(title="alexnet_jax", summary="Handwritten digit recognition with an AlexNet in JAX.")
  api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
  errors = {code: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}
            for code, text in ((400, "a PNG or JPEG that cannot be decoded, no body, or a bad length"),
                               (413, "body or image too large"),
                               (415, "unsupported content type, or neither PNG nor JPEG"),
                               (422, "no digit in the image"), (503, "busy: retry shortly"))}
  upload_schema = {"type": "string", "format": "binary"}
  request_body = {"required": True, "content": {
      **{kind: {"schema": upload_schema} for kind in IMAGE_TYPES},
      "multipart/form-data": {"schema": {"type": "object", "properties": {"file": upload_schema},
                                         "required": ["file"]}}}}
  # Bounds the images being decoded at once (one event loop serves every request).
  decode_slots = asyncio.Semaphore(DECODE_SLOTS)

  @api.get("/", include_in_schema=False)
  def index():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"))

  @api.get("/api/health")
  def health() -> dict[str, Any]:
    return {"status": "ok", "checkpoint_step": service.predictor.checkpoint_step}

  async def image_of(request: Request) -> tuple[bytes, str]:
    """The image's bytes and name from a body of a content type in IMAGE_TYPES or a multipart upload, both
    read bounded; 415 for any other content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
      body = await read_body(request, MAX_BYTES + MULTIPART_OVERHEAD)
      return await multipart_file(request.headers, body)
    if content_type in IMAGE_TYPES:
      return await read_body(request, MAX_BYTES), "body"
    raise HTTPException(415, f"content type {content_type or 'missing'!r}: send {', '.join(IMAGE_TYPES)} "
                        "bytes or a multipart/form-data upload", headers=CLOSE)

  async def decoded(work, data: bytes, name: str) -> dict[str, Any]:
    """`work(data, name)` in a worker thread once a decode slot is free (503 after DECODE_WAIT_S), its
    ImageErrors mapped to their 4xx."""
    try:
      async with asyncio.timeout(DECODE_WAIT_S):
        await decode_slots.acquire()
    except TimeoutError:
      raise HTTPException(503, f"busy: {DECODE_SLOTS} images are being decoded; retry shortly",
                          headers={"Retry-After": "1"}) from None
    try:
      return await run_in_threadpool(work, data, name)
    except digit_image.ImageTooLargeError as e:
      raise HTTPException(413, str(e)) from None
    except digit_image.UnsupportedFormatError as e:
      raise HTTPException(415, str(e)) from None
    except digit_image.ImageError as e:
      raise HTTPException(422 if "no ink" in str(e) else 400, str(e)) from None
    finally:
      decode_slots.release()

  @api.post("/api/predict", response_model=Prediction, responses=errors,
            openapi_extra={"requestBody": request_body})
  async def predict_image(request: Request) -> dict[str, Any]:
    data, name = await image_of(request)
    return await decoded(service.predict_bytes, data, name)

  length_parameter = {"name": "length", "in": "query", "required": False, "description": "Read exactly this "
                      "many digits (a field of known length: a postcode's 5).",
                      "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH}}

  @api.post("/api/read", response_model=NumberAnswer, responses=errors,
            openapi_extra={"requestBody": request_body, "parameters": [length_parameter]})
  async def read_image(request: Request) -> dict[str, Any]:
    """The image read as a string of digits (a postcode, an amount), each digit's box in its pixels;
    `?length=N` reads exactly N digits (a field of known length)."""
    length = length_of(request)
    data, name = await image_of(request)
    return await decoded(functools.partial(service.read_bytes, length=length), data, name)

  return api


def define_flags() -> None:
  require_extra()
  cli.define_trained_run()
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. The default serves this machine only; "
                      "--host 0.0.0.0 serves every network this machine is on (your explicit choice).")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")


def main(argv: list[str]) -> None:
  require_extra()
  cli.quiet_libraries()
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  try:
    predictor = predict.load_predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights)
  except checkpointing.CheckpointError as e:
    sys.exit(f"error: {e}")
  calibration = "calibrated" if predictor.calibrated else "UNCALIBRATED (no temperature stored)"
  print(f"serving {FLAGS.workdir} (checkpoint step {predictor.checkpoint_step}, {calibration} "
        f"probabilities) on http://{FLAGS.host}:{FLAGS.port}/", flush=True)
  uvicorn.run(create_app(PredictionService(predictor)), host=FLAGS.host, port=FLAGS.port,
              log_level="warning", limit_concurrency=MAX_CONNECTIONS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
