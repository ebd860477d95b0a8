"""Ten digits drawn with the mouse on the serve page, in a real (headless) browser, the way a person
writes them; reports what the page answered for each:

  python -m experiments.drawn_digits --workdir runs/default [--checkpoint best] [--out DIR]

Starts `python -m alexnet_jax.serve` on a free localhost port, drives Debian's Chromium through Playwright
(never `playwright install`, which downloads a browser), draws each stroke list of `STROKES` on the
canvas, waits for the answer to the last stroke and reads the digit the page shows. With `--out`, saves a
screenshot of the page and the canvas's own PNG per digit. tests/test_serve.py draws with the same code.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from absl import app, flags

from alexnet_jax import cli

FLAGS = flags.FLAGS
CANVAS = 280  # the page's canvas, in its own pixels
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Strokes in canvas pixels, each a polyline; one list per digit, in the order a hand writes them.
STROKES: dict[str, list[list[tuple[int, int]]]] = {
    "0": [[(140, 40), (95, 60), (75, 140), (95, 215), (140, 240), (185, 215), (205, 140), (185, 60),
           (140, 40)]],
    "1": [[(150, 40), (145, 140), (140, 240)]],
    "2": [[(80, 90), (110, 50), (165, 45), (200, 85), (185, 135), (80, 235), (210, 235)]],
    "3": [[(80, 60), (140, 40), (195, 70), (180, 120), (125, 140), (185, 160), (200, 205), (160, 240),
           (80, 225)]],
    "4": [[(100, 40), (80, 160), (210, 160)], [(175, 60), (175, 245)]],
    "5": [[(195, 45), (100, 45), (90, 130), (150, 120), (195, 160), (185, 215), (130, 240), (80, 220)]],
    "6": [[(180, 45), (125, 90), (95, 160), (105, 225), (150, 242), (190, 205), (180, 155), (130, 142),
           (97, 175)]],
    "7": [[(70, 50), (210, 50), (170, 130), (130, 240)]],
    "8": [[(185, 75), (140, 40), (95, 70), (110, 120), (170, 160), (190, 210), (140, 245), (90, 210),
           (110, 160), (170, 120), (185, 75)]],
    "9": [[(190, 90), (150, 50), (100, 70), (95, 120), (140, 140), (190, 100), (185, 170), (170, 245)]],
}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextmanager
def running_server(workdir: str, checkpoint: str) -> Iterator[str]:
  """`python -m alexnet_jax.serve` in its own process; yields its URL once it answers."""
  import httpx  # noqa: PLC0415

  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "alexnet_jax.serve", "--workdir", workdir, "--checkpoint", checkpoint,
       "--port", str(port)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 120
    while True:
      if process.poll() is not None:
        raise RuntimeError(f"the server stopped: {process.stdout.read()[-2000:]}")
      try:
        if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        if time.monotonic() > deadline:
          raise
        time.sleep(0.2)
    yield url
  finally:
    process.terminate()
    process.wait(timeout=30)


def launch_chromium(playwright, profile_dir: str):
  """Debian's Chromium, headless, with a fresh profile; returns a browser context."""
  return playwright.chromium.launch_persistent_context(
      profile_dir, executable_path=CHROMIUM, headless=True, viewport={"width": 900, "height": 700},
      args=list(CHROMIUM_ARGS))


def draw(page, strokes: Sequence[Sequence[tuple[int, int]]]) -> None:
  """Mouse strokes on the canvas, point to point in small steps, as a hand moves."""
  box = page.locator("#canvas").bounding_box()
  scale = box["width"] / CANVAS
  for stroke in strokes:
    (x, y), *rest = stroke
    page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
    page.mouse.down()
    for x, y in rest:
      page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
    page.mouse.up()


def wait_for_answer(page, element: str = "digit") -> str:
  """What the page shows in `element` (#digit: the digit; #number: a number's reading) once the send made
  on the last stroke's release has been answered."""
  page.wait_for_function("(element) => { const c = document.getElementById('canvas');"
                         " return c.dataset.pending === '0' &&"
                         " document.getElementById(element).dataset.requests === c.dataset.sent; }",
                         arg=element)
  return page.inner_text(f"#{element}")


def canvas_png(page) -> bytes:
  import base64  # noqa: PLC0415

  data_url = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
  return base64.b64decode(data_url.split(",", 1)[1])


def draw_all(url: str, out: str = "") -> dict[str, str]:
  """digit -> what the page answered after it was drawn."""
  from playwright.sync_api import sync_playwright  # noqa: PLC0415

  answers = {}
  with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
    browser = launch_chromium(playwright, profile)
    page = browser.new_page()
    page.goto(url)
    for digit, strokes in STROKES.items():
      page.click("#clear")
      draw(page, strokes)
      answers[digit] = wait_for_answer(page)
      if out:
        page.screenshot(path=os.path.join(out, f"page_{digit}.png"))
        with open(os.path.join(out, f"canvas_{digit}.png"), "wb") as f:
          f.write(canvas_png(page))
    browser.close()
  return answers


def define_flags() -> None:
  cli.define_trained_run()
  flags.DEFINE_string("out", "", "Folder for a screenshot of the page and the canvas PNG per digit.")


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
  with running_server(FLAGS.workdir, FLAGS.checkpoint) as url:
    answers = draw_all(url, FLAGS.out)
  right = [d for d, answer in answers.items() if answer == d]
  for digit, answer in answers.items():
    print(f"drew {digit}: the page answered {answer}{'' if answer == digit else '  <- wrong'}")
  print(f"{len(right)} of {len(answers)} right", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
