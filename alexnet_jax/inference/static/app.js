// The drawing page: strokes on a black canvas in white, as MNIST's digits are light ink on black; the
// canvas is sent as PNG after every stroke (and, throttled, while drawing): in the "one digit" mode to
// /api/predict, in the "a number" mode (a wider canvas) to /api/read, whose digits' boxes are drawn on a
// second canvas laid over the drawing (so they never become ink in the PNG sent).
"use strict";

// Per mode: the canvas's own pixels, the endpoint, the page's heading and hint.
const MODES = {
  digit: { width: 280, height: 280, api: "/api/predict", title: "Draw a digit",
           hint: "Write one digit, 0 to 9, with the mouse, a pen or a finger. " +
                 "The network answers as you draw." },
  number: { width: 800, height: 280, api: "/api/read", title: "Write a number",
            hint: "Write a number (a postcode, an amount), its digits side by side and apart. " +
                  "Each digit's box is drawn over your writing with its reading." },
};

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const digit = document.getElementById("digit");
const bars = document.getElementById("bars");
const preview = document.getElementById("preview");
const error = document.getElementById("error");
const overlay = document.getElementById("overlay");
const overlayContext = overlay.getContext("2d");
const number = document.getElementById("number");
const confidence = document.getElementById("confidence");
const uncertain = document.getElementById("uncertain");
const digitList = document.getElementById("digits");
// MNIST strokes are about 2.5 px in a 20 px digit box: an eighth of the digit's height.
const PEN_WIDTH = 22;
let drawing = false;
let inked = false;
let pending = null;
let sent = 0;
let mode = "digit";

function clearCanvas() {
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  inked = false;
  digit.textContent = "–";
  bars.replaceChildren();
  preview.removeAttribute("src");
  number.textContent = "–";
  clearReading();
  error.textContent = "";
}

// The number mode's answer removed: the confidence, the flag, the digits' list and the overlay.
function clearReading() {
  confidence.textContent = "";
  uncertain.hidden = true;
  digitList.replaceChildren();
  clearOverlay();
}

function clearOverlay() {
  overlayContext.clearRect(0, 0, overlay.width, overlay.height);
  overlay.dataset.boxes = "0";
}

// The canvas resized for the mode (which clears it, and resets its pen), and the mode's answer shown.
function setMode(name) {
  mode = name;
  const settings = MODES[name];
  for (const element of [canvas, overlay]) {
    element.width = settings.width;
    element.height = settings.height;
  }
  canvas.classList.toggle("wide", name === "number");
  document.querySelector("h1").textContent = settings.title;
  document.getElementById("hint").textContent = settings.hint;
  for (const id of ["digit-answer", "digit-detail"]) document.getElementById(id).hidden = name !== "digit";
  for (const id of ["number-answer", "digits"]) document.getElementById(id).hidden = name !== "number";
  setPen();
  clearCanvas();
}

function setPen() {
  context.strokeStyle = "#fff";
  context.lineWidth = PEN_WIDTH;
  context.lineCap = "round";
  context.lineJoin = "round";
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  canvas.setPointerCapture(event.pointerId);
  clearOverlay();  // the boxes (or an uploaded image) of the last answer: redrawn by the next one
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

// canvas.dataset.pending and .sent, digit.dataset.requests and number.dataset.requests (both the last
// answered send, in either mode): the page's state, readable by a test waiting for the answer to the last
// stroke.
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

// `view`: where an uploaded image is shown on the overlay in the number mode (null: the canvas itself).
async function send(body, type, view = null) {
  const request = ++sent;
  const sentMode = mode;
  canvas.dataset.sent = String(request);
  let response = null;
  let result;
  try {
    response = await fetch(MODES[sentMode].api, { method: "POST", headers: { "Content-Type": type }, body });
    result = await answer(response);
  } catch (failure) {
    response = null;
    result = { detail: `the server did not answer (${failure})` };
  }
  if (request !== sent || sentMode !== mode) return;  // a newer drawing sent since, or the mode changed
  if (response !== null && response.ok) {
    error.textContent = "";
    if (sentMode === "digit") show(result);
    else showReading(result, view);
  } else {
    showError(typeof result.detail === "string" ? result.detail : JSON.stringify(result.detail));
  }
  digit.dataset.requests = String(request);
  number.dataset.requests = String(request);
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
  number.textContent = "?";
  clearReading();
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;

// The number mode's answer: the string, its confidence, the flag, one line per digit, and each digit's box
// with its reading drawn on the overlay (over the drawing, or over the uploaded image shown there).
function showReading(result, view) {
  number.textContent = result.text;
  confidence.textContent = `confidence ${percent(result.confidence)}`;
  uncertain.hidden = !result.uncertain;
  digitList.replaceChildren(...result.digits.map((d) => {
    const item = document.createElement("li");
    item.textContent = `${d.digit}: ${percent(Math.max(...d.probabilities))}, box [${d.box.join(", ")}]`;
    return item;
  }));
  const { scale, dx, dy } = view ?? { scale: 1, dx: 0, dy: 0 };
  clearOverlay();
  if (view !== null) {
    overlayContext.fillStyle = "#000";
    overlayContext.fillRect(0, 0, overlay.width, overlay.height);
    overlayContext.drawImage(view.bitmap, dx, dy, view.bitmap.width * scale, view.bitmap.height * scale);
  }
  overlayContext.lineWidth = 3;
  overlayContext.font = "bold 22px system-ui, sans-serif";
  overlayContext.textBaseline = "bottom";
  for (const d of result.digits) {
    const [x, y, w, h] = d.box;
    const colour = Math.max(...d.probabilities) < 0.9 ? "#ff5a5a" : "#39d98a";  // read_number's threshold
    overlayContext.strokeStyle = colour;
    overlayContext.fillStyle = colour;
    overlayContext.strokeRect(dx + x * scale, dy + y * scale, w * scale, h * scale);
    const top = dy + y * scale;
    overlayContext.fillText(String(d.digit), dx + x * scale + 2, top > 24 ? top - 2 : top + h * scale + 24);
  }
  overlay.dataset.boxes = String(result.digits.length);
}

// An uploaded image fitted into the overlay (number mode), so that its boxes can be drawn over it; null when
// the browser cannot decode it (the reading is still shown, without boxes).
async function uploadView(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(overlay.width / bitmap.width, overlay.height / bitmap.height);
    return { bitmap, scale, dx: (overlay.width - bitmap.width * scale) / 2,
             dy: (overlay.height - bitmap.height * scale) / 2 };
  } catch (_) {
    return null;
  }
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
document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";  // the same file chosen again is sent again
  if (!file) return;
  const view = mode === "number" ? await uploadView(file) : null;
  send(file, file.type || "application/octet-stream", view);
});
for (const name of Object.keys(MODES)) {
  document.getElementById(`mode-${name}`).addEventListener("change", (event) => {
    if (event.target.checked) setMode(name);
  });
}

setMode(document.getElementById("mode-number").checked ? "number" : "digit");  // a reload keeps the choice
