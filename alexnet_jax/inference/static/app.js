// The drawing page: strokes on a black canvas in white, as MNIST's digits are light ink on black; the
// canvas is sent as PNG to /api/predict after every stroke (and, throttled, while drawing).
"use strict";

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const digit = document.getElementById("digit");
const bars = document.getElementById("bars");
const preview = document.getElementById("preview");
const error = document.getElementById("error");
// MNIST strokes are about 2.5 px in a 20 px digit box: an eighth of the digit's height.
const PEN_WIDTH = 22;
let drawing = false;
let inked = false;
let pending = null;
let sent = 0;

function clearCanvas() {
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  inked = false;
  digit.textContent = "–";
  bars.replaceChildren();
  preview.removeAttribute("src");
  error.textContent = "";
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  canvas.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  context.beginPath();
  context.moveTo(x, y);
  context.lineTo(x, y);
  context.stroke();
  inked = true;
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  context.lineTo(x, y);
  context.stroke();
  schedule(250);
});
for (const name of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(name, () => {
    if (!drawing) return;
    drawing = false;
    schedule(0);
  });
}

// canvas.dataset.pending and .sent, digit.dataset.requests (the last answered send): the page's state,
// readable by a test waiting for the answer to the last stroke.
function schedule(delayMs) {
  if (!inked) return;
  if (pending !== null) {
    if (delayMs > 0) return;  // a throttled send is already waiting
    clearTimeout(pending);
  }
  canvas.dataset.pending = "1";
  pending = setTimeout(() => {
    pending = null;
    canvas.toBlob((blob) => {
      send(blob, "image/png");
      if (pending === null) canvas.dataset.pending = "0";
    }, "image/png");
  }, delayMs);
}

async function send(body, type) {
  const request = ++sent;
  canvas.dataset.sent = String(request);
  let response = null;
  let result;
  try {
    response = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": type }, body });
    result = await answer(response);
  } catch (failure) {
    response = null;
    result = { detail: `the server did not answer (${failure})` };
  }
  if (request !== sent) return;  // a newer drawing has been sent since
  if (response !== null && response.ok) {
    error.textContent = "";
    show(result);
  } else {
    showError(typeof result.detail === "string" ? result.detail : JSON.stringify(result.detail));
  }
  digit.dataset.requests = String(request);
}

// The server's JSON; any other body (a proxy's error page, uvicorn's plain-text 503) becomes the `detail`
// to show, so that every failure is explained on the page.
async function answer(response) {
  const text = await response.text();
  try {
    const parsed = JSON.parse(text);
    if (parsed !== null && typeof parsed === "object") return parsed;
  } catch (_) {
    // not JSON: shown as text below
  }
  return { detail: text.trim() || `${response.status} ${response.statusText}` };
}

// The error's text in place of an answer: the probabilities and preview of an earlier image are removed.
function showError(text) {
  error.textContent = text;
  digit.textContent = "?";
  bars.replaceChildren();
  preview.removeAttribute("src");
}

function show(result) {
  digit.textContent = String(result.digit);
  const rows = [];
  result.probabilities.forEach((p, d) => {
    const label = document.createElement("span");
    label.textContent = String(d);
    const bar = document.createElement("div");
    bar.className = d === result.digit ? "bar top" : "bar";
    const fill = document.createElement("div");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.textContent = `${(100 * p).toFixed(1)}%`;
    rows.push(label, bar, value);
  });
  bars.replaceChildren(...rows);
  preview.src = `data:image/png;base64,${result.preprocessed_png_base64}`;
}

document.getElementById("clear").addEventListener("click", clearCanvas);
document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) send(file, file.type || "application/octet-stream");
  event.target.value = "";  // the same file chosen again is sent again
});

context.strokeStyle = "#fff";
context.lineWidth = PEN_WIDTH;
context.lineCap = "round";
context.lineJoin = "round";
clearCanvas();
