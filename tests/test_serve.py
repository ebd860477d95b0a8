"""The drawing page and the JSON API: the same answers as `predict`, a 4xx naming every bad input and the
server still serving, no 500 under schemathesis, a burst of concurrent requests, and a real browser
drawing digits on the page."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os

import hypothesis
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from alexnet_jax.inference import predict, serve
from experiments import drawn_digits


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
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
  assert "/api/predict" in client.get("/openapi.json").json()["paths"]


def test_the_api_answers_as_the_python_predictor(client, predictor, tmp_path):
  data = _drawn_one()
  path = tmp_path / "one.png"
  path.write_bytes(data)
  expected = predictor([predict.read_image(str(path))])[0]
  for response in (_predict(client, data),
                   client.post("/api/predict", files={"file": ("one.png", data, "image/png")})):
    assert response.status_code == 200, response.text
    result = response.json()
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-6, rtol=0)
    assert result["digit"] == int(np.argmax(expected)) == result["top_k"][0]["digit"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["preprocessed_png_base64"]))))
    np.testing.assert_array_equal(seen, predict.preprocess(predict.read_image(str(path)))[..., 0])


def _bad_inputs() -> list[tuple[str, bytes, str, int, str]]:
  blank = _png(np.full((50, 50), 255))
  wide = _png(np.zeros((1, serve.MAX_SIDE + 1)))
  return [("not an image", b"hello, world", "image/png", 400, "not a readable image"),
          ("empty body", b"", "image/png", 400, "empty"),
          ("blank image", blank, "image/png", 422, "no ink"),
          ("too many pixels", wide, "image/png", 413, "more than 4096 a side"),
          ("too many bytes", b"\0" * (serve.MAX_BYTES + 1), "image/png", 413, "more than"),
          ("wrong content type", _drawn_one(), "text/plain", 415, "content type 'text/plain'"),
          ("multipart without a file", b"--x\r\n\r\n--x--\r\n", "multipart/form-data; boundary=x", 400, "")]


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


# ----------------------------------------------------------------------------------------------------
# A real server in its own process: concurrency, and a browser drawing on the page.
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(synthetic_run):
  workdir, _ = synthetic_run
  with drawn_digits.running_server(str(workdir), "latest") as url:
    yield url


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
    for digit in ("1", "7"):
      page.click("#clear")
      drawn_digits.draw(page, drawn_digits.STROKES[digit])
      shown = drawn_digits.wait_for_answer(page)
      path = tmp_path / f"{digit}.png"
      path.write_bytes(drawn_digits.canvas_png(page))
      expected = int(np.argmax(predictor([predict.read_image(str(path))])[0]))
      assert shown == str(expected), digit
      assert page.locator("#bars .bar").count() == 10
      assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")
    browser.close()
