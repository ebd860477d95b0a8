"""The drawing page and the JSON API: the same answers as `predict` (one digit) and `read_number` (a
number, boxes in the uploaded image's pixels), a 4xx naming every bad input and the server still serving,
no 500 under schemathesis, a burst of concurrent requests, a real browser drawing digits and numbers on the
page, and a server that hostile bodies cannot exhaust (bounded reads, PNG and JPEG only, bounded decoding
memory and concurrency, every Pillow failure a 4xx)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import hypothesis
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from alexnet_jax.inference import digit_image, number_reader, predict, read_number, serve
from experiments import drawn_digits, number_strings, varied_digits
from tests.conftest import REPO_ROOT, free_port

MB = 1024 * 1024


def _png(array: np.ndarray) -> bytes:
  return _encoded(array, "PNG")


def _encoded(array: np.ndarray, image_format: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array.astype(np.uint8)).save(buffer, format=image_format)
  return buffer.getvalue()


def _drawn_one() -> bytes:
  """A white vertical stroke on black, 200 x 200: a '1' as the page's canvas would send it."""
  image = np.zeros((200, 200), np.uint8)
  image[30:170, 92:110] = 255
  return _png(image)


@pytest.fixture(scope="module")
def predictor(synthetic_run):
  workdir, _ = synthetic_run
  return predict.load_predictor(str(workdir), "latest")


@pytest.fixture(scope="module")
def client(predictor):
  return TestClient(serve.create_app(serve.PredictionService(predictor)))


def _predict(client, data: bytes, content_type: str = "image/png"):
  return client.post("/api/predict", content=data, headers={"Content-Type": content_type})


def test_health_page_and_static_files(client, predictor):
  assert client.get("/api/health").json() == {"status": "ok", "checkpoint_step": predictor.checkpoint_step}
  page = client.get("/")
  assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
  assert client.get("/static/app.js").status_code == 200
  assert client.get("/static/style.css").status_code == 200
  assert page.status_code == 200 and 'id="mode-number"' in page.text and 'id="overlay"' in page.text
  schema = client.get("/openapi.json").json()
  assert {"/api/predict", "/api/read"} <= set(schema["paths"])
  answer = schema["paths"]["/api/read"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
  assert answer == {"$ref": "#/components/schemas/NumberAnswer"}
  assert set(schema["components"]["schemas"]["NumberAnswer"]["properties"]) == {
      "text", "confidence", "uncertain", "digits", "checkpoint_step"}


def test_the_api_answers_as_the_python_predictor(client, predictor, tmp_path):
  data = _drawn_one()
  path = tmp_path / "one.png"
  path.write_bytes(data)
  expected = predictor([digit_image.read_image(str(path))])[0]
  for response in (_predict(client, data),
                   client.post("/api/predict", files={"file": ("one.png", data, "image/png")})):
    assert response.status_code == 200, response.text
    result = response.json()
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-6, rtol=0)
    assert result["digit"] == int(np.argmax(expected)) == result["top_k"][0]["digit"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["preprocessed_png_base64"]))))
    np.testing.assert_array_equal(seen, digit_image.preprocess(digit_image.read_image(str(path)))[..., 0])


def _bad_inputs() -> list[tuple[str, bytes, str, int, str]]:
  blank = _png(np.full((50, 50), 255))
  wide = _png(np.zeros((1, serve.MAX_SIDE + 1)))
  return [("not an image", b"hello, world", "image/png", 415, "not a PNG or JPEG image"),
          ("a truncated PNG", _drawn_one()[:60], "image/png", 400, "not a readable image"),
          ("empty body", b"", "image/png", 400, "empty"),
          ("blank image", blank, "image/png", 422, "no ink"),
          ("too many pixels", wide, "image/png", 413, "more than 4096 a side"),
          ("too many bytes", b"\0" * (serve.MAX_BYTES + 1), "image/png", 413, "more than"),
          ("wrong content type", _drawn_one(), "text/plain", 415, "content type 'text/plain'"),
          ("multipart without a file", b"--x\r\n\r\n--x--\r\n", "multipart/form-data; boundary=x", 400, ""),
          ("multipart without a boundary", b"--x--\r\n", "multipart/form-data", 400, "boundary")]


@pytest.mark.parametrize("bad", _bad_inputs(), ids=[b[0] for b in _bad_inputs()])
def test_bad_input_gets_a_4xx_naming_it_and_the_server_keeps_serving(client, bad):
  name, data, content_type, status, message = bad
  response = _predict(client, data, content_type)
  assert response.status_code == status, (name, response.text)
  assert message in response.json()["detail"]
  assert _predict(client, _drawn_one()).status_code == 200


def test_schemathesis_finds_no_server_error(client):
  """Requests generated from the app's own OpenAPI schema (every operation, bodies of every declared
  content type, a bounded number of cases): never a 500."""
  import schemathesis  # noqa: PLC0415
  from schemathesis.checks import not_a_server_error  # noqa: PLC0415

  schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
  calls = []
  for result in schema.get_all_operations():
    operation = result.ok()

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=30, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def check(case):
      response = case.call()
      calls.append(response.status_code)
      case.validate_response(response, checks=[not_a_server_error])

    check()
  assert len(calls) >= 30 and all(code < 500 for code in calls)


def _other_formats() -> list[tuple[str, bytes]]:
  """The drawn '1' in formats Pillow reads but the server must not decode."""
  one = np.asarray(Image.open(io.BytesIO(_drawn_one())))
  return [(name, _encoded(one, name)) for name in ("BMP", "TIFF", "GIF", "ICO")]


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "multipart/form-data"])
@pytest.mark.parametrize("other", _other_formats(), ids=[name for name, _ in _other_formats()])
def test_only_png_and_jpeg_are_decoded_whatever_the_content_type_says(client, other, content_type):
  name, data = other
  if content_type == "multipart/form-data":
    response = client.post("/api/predict", files={"file": (f"one.{name.lower()}", data, "image/png")})
  else:
    response = _predict(client, data, content_type)
  assert response.status_code == 415, (name, response.text)
  assert "not a PNG or JPEG image" in response.json()["detail"]
  jpeg = _encoded(np.asarray(Image.open(io.BytesIO(_drawn_one()))), "JPEG")
  assert _predict(client, jpeg, "image/jpeg").status_code == 200


@pytest.mark.parametrize("error", [MemoryError("out of memory"), Image.DecompressionBombError("a bomb"),
                                   NotImplementedError("a feature"), OverflowError("too big a number")],
                         ids=lambda e: type(e).__name__)
def test_every_pillow_failure_is_a_4xx_json(predictor, monkeypatch, error):
  """Pillow raising while it decodes the pixels (simulated): a JSON 4xx naming the error, never a 500, and
  the server still answers a good digit."""
  client = TestClient(serve.create_app(serve.PredictionService(predictor)), raise_server_exceptions=False)

  def failing_load(self):
    raise error

  with monkeypatch.context() as patch:
    patch.setattr(ImageFile.ImageFile, "load", failing_load)
    response = _predict(client, _drawn_one())
  too_large = isinstance(error, MemoryError | Image.DecompressionBombError)
  assert response.status_code == (413 if too_large else 400), response.text
  assert response.headers["content-type"] == "application/json"
  assert type(error).__name__ in response.json()["detail"]
  assert _predict(client, _drawn_one()).status_code == 200


def test_images_past_the_decode_slots_wait_then_get_503(predictor, monkeypatch):
  """With every decode slot taken, a request waits DECODE_WAIT_S, then gets a JSON 503 with Retry-After;
  the request holding the slot still answers 200."""
  monkeypatch.setattr(serve, "DECODE_SLOTS", 1)
  monkeypatch.setattr(serve, "DECODE_WAIT_S", 0.3)
  service = serve.PredictionService(predictor)
  entered, release = threading.Event(), threading.Event()
  predict_bytes = service.predict_bytes

  def held_once(data, name="upload"):
    if not entered.is_set():
      entered.set()
      assert release.wait(30)
    return predict_bytes(data, name)

  monkeypatch.setattr(service, "predict_bytes", held_once)
  with TestClient(serve.create_app(service)) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
    first = pool.submit(_predict, client, _drawn_one())
    assert entered.wait(30)
    busy = _predict(client, _drawn_one())
    release.set()
    assert busy.status_code == 503, busy.text
    assert "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
    assert first.result(timeout=30).status_code == 200
    assert _predict(client, _drawn_one()).status_code == 200


def test_large_images_are_scaled_down_before_they_become_floats(monkeypatch):
  """A 4,096-px PNG and JPEG reach preprocessing at WORK_SIDE pixels a side (the JPEG decoded at 1/4 scale
  by its decoder: `draft`), the EXIF orientation still honoured, and the network sees nearly the 28x28
  image that the full-size pixels give."""
  from PIL import JpegImagePlugin  # noqa: PLC0415

  decoded_sizes = []
  draft = JpegImagePlugin.JpegImageFile.draft

  def recorded_draft(self, mode, size):
    result = draft(self, mode, size)
    decoded_sizes.append(self.size)
    return result

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recorded_draft)
  image = np.full((4096, 2048), 255, np.uint8)
  image[800:3300, 900:1150] = 0  # a '1', dark on light
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated: shown 4,096 wide and 2,048 high
  full = digit_image.preprocess(np.rot90(image, -1).astype(np.float32) / 255).astype(int)
  for image_format in ("PNG", "JPEG"):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, exif=exif)
    grey = digit_image.decode_image(buffer.getvalue(), formats=serve.FORMATS, work_side=serve.WORK_SIDE)
    assert grey.shape == (serve.WORK_SIDE // 2, serve.WORK_SIDE) and grey.dtype == np.float32
    seen = digit_image.preprocess(grey).astype(int)
    assert (np.abs(seen - full) > 8).mean() < 0.01  # at most the stroke's two ends one pixel apart
  assert decoded_sizes == [(512, 1024)]  # the JPEG's pixels were decoded at 1/4 scale


# --- POST /api/read: a whole number ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_test(mnist_manual_dir):
  return varied_digits.read_mnist_test(str(mnist_manual_dir))


def _number_image(mnist_test, seed: int = 0, length: int = 5) -> np.ndarray:
  """`length` MNIST test digits side by side, 6 to 10 px apart (light on black, uint8)."""
  images, _ = mnist_test
  rng = np.random.default_rng([seed, 35])
  image, _ = number_strings.compose(images[rng.integers(0, len(images), length)], (6, 10), rng)
  return image


def _read(client, data: bytes, content_type: str = "image/png"):
  return client.post("/api/read", content=data, headers={"Content-Type": content_type})


def _as_json(reading: read_number.NumberReading, step: int) -> dict:
  return {**reading.to_dict(), "checkpoint_step": step,
          "digits": [{"digit": d.digit, "probabilities": list(d.probabilities), "box": list(d.box)}
                     for d in reading.digits]}


def test_the_read_api_answers_as_read_number(client, predictor, mnist_test, tmp_path):
  """A PNG of five MNIST test digits, as the body and as a multipart upload: the JSON is `read_number`'s
  reading of the same file through the Python API (probabilities to 1e-6)."""
  data = _png(_number_image(mnist_test))
  path = tmp_path / "number.png"
  path.write_bytes(data)
  expected = _as_json(read_number.read_number(digit_image.read_image(str(path)),
                                              read_number.predictor_probabilities(predictor)),
                      predictor.checkpoint_step)
  for response in (_read(client, data),
                   client.post("/api/read", files={"file": ("number.png", data, "image/png")})):
    assert response.status_code == 200, response.text
    result = response.json()
    assert {k: v for k, v in result.items() if k not in ("digits", "confidence")} == {
        k: v for k, v in expected.items() if k not in ("digits", "confidence")}
    assert result["confidence"] == pytest.approx(expected["confidence"], rel=1e-5)
    assert [d["box"] for d in result["digits"]] == [d["box"] for d in expected["digits"]]
    assert [d["digit"] for d in result["digits"]] == [d["digit"] for d in expected["digits"]]
    np.testing.assert_allclose([d["probabilities"] for d in result["digits"]],
                               [d["probabilities"] for d in expected["digits"]], atol=1e-6, rtol=0)


def test_a_length_asked_for_is_read_and_a_bad_or_impossible_one_is_a_400(client, predictor, mnist_test):
  data = _png(_number_image(mnist_test))
  grey = digit_image.decode_image(data, formats=serve.FORMATS, work_side=serve.WORK_SIDE)
  expected = read_number.read_number(grey, read_number.predictor_probabilities(predictor), length=6)
  response = client.post("/api/read?length=6", content=data, headers={"Content-Type": "image/png"})
  assert response.status_code == 200, response.text
  assert response.json()["text"] == expected.text and len(expected.text) == 6
  bad = ("abc", "0", "-1", "²", str(serve.MAX_LENGTH + 1))  # "²".isdigit() is true, int("²") fails
  for value, message in (*((v, "whole number") for v in bad), ("99", "cannot be read as 99 digits")):
    response = client.post(f"/api/read?length={value}", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 400, (value, response.text)
    assert message in response.json()["detail"]


@pytest.mark.parametrize("image_format", ["PNG", "JPEG rotated by EXIF"])
def test_a_large_number_image_is_read_with_boxes_in_its_own_pixels(client, predictor, mnist_test,
                                                                   image_format):
  """A number image over WORK_SIDE pixels wide is decoded scaled down (bounded memory), and its boxes are
  scaled back: they are `read_number`'s boxes on the decoded pixels times the factor, and together they
  cover the ink of the full-size image to within that factor. A JPEG stored on its side (EXIF orientation
  6) is read upright, its boxes in the upright image's pixels."""
  factor = 10
  upright = np.kron(_number_image(mnist_test, seed=1), np.ones((factor, factor), np.uint8))
  assert upright.shape[1] > serve.WORK_SIDE
  buffer = io.BytesIO()
  if image_format == "PNG":
    Image.fromarray(upright).save(buffer, format="PNG")
  else:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: stored a quarter anticlockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(buffer, format="JPEG", quality=95,
                                                                      exif=exif)
  data = buffer.getvalue()
  response = _read(client, data, "image/png" if image_format == "PNG" else "image/jpeg")
  assert response.status_code == 200, response.text
  boxes = np.array([d["box"] for d in response.json()["digits"]])

  grey = digit_image.decode_image(data, formats=serve.FORMATS, work_side=serve.WORK_SIDE)
  scale = round(upright.shape[1] / grey.shape[1])
  assert scale > 1 and grey.shape[0] * scale >= upright.shape[0]  # decoded scaled down, upright
  reading = read_number.read_number(grey, read_number.predictor_probabilities(predictor))
  expected = []
  for digit in reading.digits:  # each decoded pixel averages a scale x scale block of the upright image
    x, y, w, h = digit.box
    right, bottom = min((x + w) * scale, upright.shape[1]), min((y + h) * scale, upright.shape[0])
    expected.append([x * scale, y * scale, right - x * scale, bottom - y * scale])
  assert boxes.tolist() == expected
  rows, cols = np.flatnonzero((upright > 64).any(axis=1)), np.flatnonzero((upright > 64).any(axis=0))
  ink = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
  union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), (boxes[:, 0] + boxes[:, 2]).max(),
                    (boxes[:, 1] + boxes[:, 3]).max()])
  assert np.abs(union - ink).max() <= 2 * scale, (union, ink)


def _read_bad_inputs() -> list[tuple[str, bytes, str, int, str]]:
  bmp = _other_formats()[0][1]
  return [*_bad_inputs(), ("a BMP labelled PNG", bmp, "image/png", 415, "not a PNG or JPEG image")]


@pytest.mark.parametrize("bad", _read_bad_inputs(), ids=[b[0] for b in _read_bad_inputs()])
def test_bad_input_to_read_gets_the_same_4xx_as_predict(client, mnist_test, bad):
  name, data, content_type, status, message = bad
  response = _read(client, data, content_type)
  assert response.status_code == status, (name, response.text)
  assert response.headers["content-type"] == "application/json"
  assert message in response.json()["detail"]
  assert response.json() == _predict(client, data, content_type).json()
  assert _read(client, _png(_number_image(mnist_test))).status_code == 200


# ----------------------------------------------------------------------------------------------------
# A real server in its own process: concurrency, and a browser drawing on the page.
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(workdir: str):
  """`python -m alexnet_jax.serve` in its own process on 127.0.0.1: (url, pid) once it answers."""
  import httpx  # noqa: PLC0415

  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "alexnet_jax.serve", "--workdir", workdir, "--checkpoint", "latest",
       "--port", str(port)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 120
    while True:
      assert process.poll() is None, f"the server stopped: {process.stdout.read()[-2000:]}"
      try:
        if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        assert time.monotonic() < deadline, "the server did not answer within 120 s"
        time.sleep(0.2)
    yield SimpleNamespace(url=url, pid=process.pid, process=process)
  finally:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(synthetic_run):
  workdir, _ = synthetic_run
  with _serving(str(workdir)) as running:
    yield running


@pytest.fixture(scope="module")
def server(served):
  return served.url


def _memory_mb(pid: int) -> dict[str, float]:
  """The process's resident memory now (VmRSS) and at its peak (VmHWM), in MiB."""
  with open(f"/proc/{pid}/status") as status:
    fields = dict(line.split(":", 1) for line in status)
  return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def _peak_growth_mb(pid: int, send) -> tuple[float, object]:
  """How far the process's peak resident memory rose above its resident memory while `send()` ran (the
  peak is reset first: /proc/PID/clear_refs), and what `send()` returned."""
  with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
  before = _memory_mb(pid)
  result = send()
  return _memory_mb(pid)["VmHWM"] - before["VmRSS"], result


def _answers_a_digit(url: str) -> None:
  import httpx  # noqa: PLC0415

  response = httpx.post(f"{url}/api/predict", content=_drawn_one(), headers={"Content-Type": "image/png"},
                        timeout=60)
  assert response.status_code == 200, response.text


@pytest.mark.slow
def test_a_256_mb_chunked_body_is_refused_as_it_arrives_in_bounded_memory(served):
  """No Content-Length: the body is counted while it is read; 413 once it passes MAX_BYTES, the connection
  closed, and the server's peak resident memory grows by less than 64 MB (not the body's 256 MB)."""
  import httpx  # noqa: PLC0415

  _answers_a_digit(served.url)  # warm: the predictor's first call is behind us
  total, sent = 256 * MB, [0]

  def body():  # generated lazily: the test holds one 64 KB chunk, not 256 MB
    chunk = bytes(64 * 1024)
    while sent[0] < total:
      sent[0] += len(chunk)
      yield chunk

  def send():
    return httpx.post(f"{served.url}/api/predict", content=body(), headers={"Content-Type": "image/png"},
                      timeout=60)

  growth, response = _peak_growth_mb(served.pid, send)
  print(f"256 MB chunked body: server peak grew {growth:.1f} MiB; the client sent {sent[0] / MB:.1f} MiB")
  assert response.status_code == 413, response.text
  assert "more than" in response.json()["detail"]
  assert growth < 64, f"the server's peak resident memory grew by {growth:.0f} MiB"
  _answers_a_digit(served.url)


@pytest.mark.slow
@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_4096_px_images_sent_at_once_are_decoded_in_bounded_memory(served, image_format):
  """Four 4,096 x 4,096 images at once (the largest accepted; the PNG RGBA, a digit on transparent paper):
  each decoded in bounded memory and at most DECODE_SLOTS at a time, so the server's peak resident memory
  grows by less than 400 MB; all four answered."""
  import httpx  # noqa: PLC0415

  _answers_a_digit(served.url)
  side = serve.MAX_SIDE
  if image_format == "PNG":
    image = np.zeros((side, side, 4), np.uint8)  # transparent: white paper
    image[600:3500, 1800:2300, 3] = 255  # an opaque black stroke: a '1'
  else:
    image = np.full((side, side, 3), 255, np.uint8)
    image[600:3500, 1800:2300] = 0
  data = _encoded(image, image_format)
  del image
  assert len(data) <= serve.MAX_BYTES

  def ask(_):
    return httpx.post(f"{served.url}/api/predict", content=data,
                      headers={"Content-Type": f"image/{image_format.lower()}"}, timeout=60)

  def send():
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      return list(pool.map(ask, range(4)))

  growth, responses = _peak_growth_mb(served.pid, send)
  print(f"four 4096 px {image_format}s at once: server peak grew {growth:.1f} MiB")
  for response in responses:
    assert response.status_code == 200, response.text
    assert response.json()["digit"] in range(10)
  assert growth < 400, f"the server's peak resident memory grew by {growth:.0f} MiB"
  _answers_a_digit(served.url)


@pytest.mark.slow
def test_without_the_serve_extra_the_command_says_what_to_install_in_one_line(tmp_path):
  """`python -m alexnet_jax.serve` with fastapi not importable: one line naming the extra, exit status 1,
  no traceback."""
  code = ("import runpy, sys; sys.modules['fastapi'] = None; "
          f"sys.argv = ['alexnet_jax.serve', '--workdir', {str(tmp_path)!r}]; "
          "runpy.run_module('alexnet_jax.serve', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: alexnet_jax.serve needs the `serve` extra"), last
  assert last.endswith("pip install -e '.[serve]'"), last


@pytest.mark.slow
def test_a_burst_of_concurrent_requests_all_answer_correctly(server, predictor):
  import httpx  # noqa: PLC0415

  images = [_drawn_one(), _png(np.pad(np.full((20, 60), 255), 40)), _png(np.eye(80) * 255)]
  expected = [serve.PredictionService(predictor).predict_bytes(data)["probabilities"] for data in images]

  def ask(i):
    response = httpx.post(f"{server}/api/predict", content=images[i % 3],
                          headers={"Content-Type": "image/png"}, timeout=60)
    return i, response.status_code, response.json()

  with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
    answers = list(pool.map(ask, range(50)))
  for i, status, result in answers:
    assert status == 200, result
    np.testing.assert_allclose(result["probabilities"], expected[i % 3], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_browser_draws_digits_and_the_page_shows_the_predictors_answer(server, predictor, tmp_path):
  if not os.path.exists(drawn_digits.CHROMIUM):
    message = "Debian's chromium is needed: apt-get install chromium (never `playwright install`)"
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  from playwright.sync_api import sync_playwright  # noqa: PLC0415

  with sync_playwright() as playwright:
    browser = drawn_digits.launch_chromium(playwright, str(tmp_path / "profile"))
    page = browser.new_page()
    page.goto(server)
    # Before any drawing: an empty frame, not a broken image with its alt text.
    assert not page.is_visible("#preview")
    frame = page.locator(".frame").bounding_box()
    assert (frame["width"], frame["height"]) == (112, 112)
    for digit in ("1", "7"):
      page.click("#clear")
      drawn_digits.draw(page, drawn_digits.STROKES[digit])
      shown = drawn_digits.wait_for_answer(page)
      path = tmp_path / f"{digit}.png"
      path.write_bytes(drawn_digits.canvas_png(page))
      expected = int(np.argmax(predictor([digit_image.read_image(str(path))])[0]))
      assert shown == str(expected), digit
      assert page.locator("#bars .bar").count() == 10
      assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")
      assert page.is_visible("#preview")
    # An upload the server refuses (a BMP labelled PNG): the page shows the server's `detail`.
    bmp = _other_formats()[0][1]
    page.set_input_files("#file", files=[{"name": "one.png", "mimeType": "image/png", "buffer": bmp}])
    page.wait_for_function("() => document.getElementById('error').textContent !== ''")
    assert "not a PNG or JPEG image" in page.inner_text("#error")
    assert page.inner_text("#digit") == "?" and not page.is_visible("#preview")
    browser.close()


NUMBER = "90217"  # digits of drawn_digits.STROKES that the trained network reads reliably, drawn apart


def _draw_number(page, digits: str, scale: float = 0.8) -> None:
  """`drawn_digits.STROKES` of each digit, scaled by `scale`, centred in its own cell of the wide canvas
  (cells of a fifth of its width for five digits: gaps of about 30 px between the digits' ink)."""
  box = page.locator("#canvas").bounding_box()
  width, height = page.evaluate("[document.getElementById('canvas').width, "
                                "document.getElementById('canvas').height]")
  shown = box["width"] / width  # CSS pixels per canvas pixel
  cell = width / len(digits)
  for index, digit in enumerate(digits):
    left = index * cell + cell / 2 - scale * drawn_digits.CANVAS / 2
    top = height / 2 - scale * drawn_digits.CANVAS / 2
    for stroke in drawn_digits.STROKES[digit]:
      points = [(box["x"] + (left + scale * x) * shown, box["y"] + (top + scale * y) * shown)
                for x, y in stroke]
      page.mouse.move(*points[0])
      page.mouse.down()
      for point in points[1:]:
        page.mouse.move(*point, steps=12)
      page.mouse.up()


@pytest.mark.slow
def test_a_browser_writes_a_number_and_the_page_shows_read_numbers_answer(trained_run, tmp_path):
  """The page's number mode, on a trained network: five digits drawn side by side on the wide canvas are
  read as five, one box each drawn over the writing, and the page shows what `read_number` reads in the
  canvas's own PNG (string, confidence, flag and boxes); the one-digit mode comes back as it was."""
  if not os.path.exists(drawn_digits.CHROMIUM):
    message = "Debian's chromium is needed: apt-get install chromium (never `playwright install`)"
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  from playwright.sync_api import sync_playwright  # noqa: PLC0415

  workdir, _ = trained_run
  predictor = predict.load_predictor(str(workdir), "latest")
  with _serving(str(workdir)) as running, sync_playwright() as playwright:
    browser = drawn_digits.launch_chromium(playwright, str(tmp_path / "profile"))
    page = browser.new_page()
    page.goto(running.url)
    page.click("#mode-number")
    assert page.evaluate("document.getElementById('canvas').width") > 2 * drawn_digits.CANVAS
    assert page.is_visible("#number-answer") and not page.is_visible("#bars")
    _draw_number(page, NUMBER)
    shown = drawn_digits.wait_for_answer(page, "number")
    path = tmp_path / "number.png"
    path.write_bytes(drawn_digits.canvas_png(page))
    expected = read_number.read_number(digit_image.read_image(str(path)),
                                       read_number.predictor_probabilities(predictor))
    assert len(shown) == 5 and shown == expected.text, (shown, expected.text)
    assert page.get_attribute("#overlay", "data-boxes") == "5"
    items = page.locator("#digits li").all_inner_texts()
    assert [item.split(",", 1)[1].strip() for item in items] == [
        f"box [{', '.join(map(str, d.box))}]" for d in expected.digits]
    assert page.inner_text("#confidence") == f"confidence {100 * expected.confidence:.1f}%"
    assert page.is_visible("#uncertain") == expected.uncertain
    assert page.inner_text("#error") == ""
    page.screenshot(path=str(tmp_path / "number_page.png"))
    # Back to one digit: the square canvas and its answer, the number's boxes gone.
    page.click("#mode-digit")
    assert page.evaluate("document.getElementById('canvas').width") == drawn_digits.CANVAS
    assert page.get_attribute("#overlay", "data-boxes") == "0" and not page.is_visible("#number-answer")
    drawn_digits.draw(page, drawn_digits.STROKES["7"])
    assert drawn_digits.wait_for_answer(page) == "7"
    browser.close()


@pytest.mark.slow  # a real server
def test_a_server_of_uncalibrated_probabilities_says_so_in_its_first_line(synthetic_run, tmp_path):
  source, _ = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  (tmp_path / "calibration.json").unlink()
  with _serving(str(tmp_path)) as running:
    pass
  output = running.process.stdout.read()
  banner = next(line for line in output.splitlines() if line.startswith("serving "))
  assert "UNCALIBRATED (no temperature stored) probabilities" in banner, output
  assert len([line for line in output.splitlines() if "probabilities uncalibrated" in line]) == 1, output


def test_the_read_api_uses_the_run_s_number_reader(predictor, monkeypatch):
  """A stored reader (number_reader.py) is loaded with the service and weighs in every reading with its
  own threshold: a verifier sure of every candidate, with threshold 0, flags nothing; one that doubts
  every candidate (P(whole) e^-10) flags the same image at threshold 0.001."""
  canvas = np.zeros((60, 120), np.uint8)
  canvas[12:48, 20:26] = 255
  canvas[12:48, 80:86] = 255
  features = predictor.probabilities_and_features(np.zeros((1, 28, 28, 1), np.uint8), preprocessed=True)[1]
  size = features.shape[1] + len(number_reader.GEOMETRY)
  for bias, threshold, uncertain in ((30.0, 0.0, False), (-10.0, 1e-3, True)):
    reader = number_reader.NumberReader(np.zeros(size), np.ones(size), np.zeros(size), bias,
                                        uncertain_below=threshold)
    monkeypatch.setattr(number_reader, "load", lambda *_, reader=reader: reader)
    client = TestClient(serve.create_app(serve.PredictionService(predictor)))
    assert _read(client, _png(canvas)).json()["uncertain"] is uncertain
