// canvaslab browser UI: a mask editor plus a thin client of the native API (/api/v1).
// Plain ES module, no build step and no CDN: users reach this page through SSH tunnels on GPU servers.

import { installControl } from "./control.js";
import { installSelect } from "./select.js";

const $ = (id) => document.getElementById(id);

// Which engines a task runs on (the request models refuse any other); used when /api/v1/engines
// does not say it itself.
const TASK_ENGINES = {
  inpaint: ["patchmatch", "telea", "ns", "diffusion", "unified"],
  outpaint: ["patchmatch", "telea", "ns", "diffusion", "unified"],
  edit: ["diffusion"],
  generate: ["diffusion", "unified"],
  understand: ["unified"],
};
const CLASSICAL = new Set(["patchmatch", "telea", "ns"]);
const TASKS_WITH_IMAGE = new Set(["inpaint", "outpaint", "edit", "understand"]);
const MASK_COLOR = [255, 61, 110]; // the overlay's tint; the exported mask is black/white
const UNDO_BUDGET_BYTES = 256 * 1024 * 1024; // snapshots of a 4K mask are 64 MB each
const TERMINAL = new Set(["done", "failed", "cancelled"]);

const state = {
  task: "inpaint",
  engines: [], // [{name, tasks?, description?, available?, error?}]
  defaultEngine: null, // the server's --engine, preselected where the task allows it
  models: [], // [{name, engine?}]
  image: null, // {file: Blob, url: data URL, width, height}
  job: null, // the job being followed
  events: null, // its EventSource
  pollTimer: 0,
  before: new Map(), // job id -> what the input looked like, for the comparison
  shownJob: null,
};

// --- small helpers -----------------------------------------------------------------------------

/** Collapse a server or browser message to the single line the error box shows. */
function oneLine(message) {
  return String(message ?? "unknown error").replace(/\s+/g, " ").trim();
}

class ApiError extends Error {
  constructor(message, field) {
    super(message);
    this.field = field;
  }
}

/** fetch + JSON, turning the contract's {"error": "..."} bodies into ApiError. */
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    throw new ApiError(`cannot reach the server (${oneLine(err.message)}); is the SSH tunnel still open?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) {
      throw new ApiError("the server needs a token: open this page once as /?token=YOUR_TOKEN");
    }
    const detail = data?.error ?? (typeof data?.detail === "string" ? data.detail : null);
    throw new ApiError(oneLine(detail ?? `${response.status} ${response.statusText}`), data?.field);
  }
  return data;
}

function showError(message, field) {
  const box = $("error");
  box.textContent = oneLine(message);
  box.hidden = false;
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  const control = field && fieldControl(field);
  if (control) control.setAttribute("aria-invalid", "true");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

/** The form control that edits request field `field` (for pointing at a refused value). */
function fieldControl(field) {
  const ids = {
    prompt: state.task === "edit" ? "instruction" : "prompt", instruction: "instruction",
    negative_prompt: "negative", steps: "steps", sampling_steps: "steps", guidance_scale: "guidance",
    image_guidance_scale: "image-guidance", strength: "strength", seed: "seed", engine: "engine", model: "model",
    scheduler: "scheduler", width: "width", height: "height", questions: "questions", image: "image-file",
    mask: "mask-file", control: "control-model", expand: "extend-frac", left: "extend-px", right: "extend-px", top: "extend-px", bottom: "extend-px",
  };
  return ids[String(field).split(".")[0]] ? $(ids[String(field).split(".")[0]]) : null;
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function loadImageElement(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot decode this file as an image"));
    img.src = src;
  });
}

function listFrom(data, key) {
  const list = Array.isArray(data) ? data : data?.[key] ?? data?.data ?? [];
  return list.map((item) => (typeof item === "string" ? { name: item } : { ...item, name: item.name ?? item.id ?? item.alias ?? item.title }));
}

// --- the mask editor -------------------------------------------------------------------------

/**
 * Paints a mask on a canvas with the image's real resolution, laid over the image. The mask lives
 * in the canvas' alpha channel (opaque = fill); the tint is only for display and CSS opacity fades it.
 */
class MaskEditor {
  constructor() {
    this.imageCanvas = $("image-canvas");
    this.canvas = $("mask-canvas");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.box = $("canvas-box");
    this.cursor = $("brush-cursor");
    this.stage = $("dropzone");
    this.width = 0;
    this.height = 0;
    this.tool = "brush";
    this.size = Number($("brush-size").value);
    this.undoStack = [];
    this.redoStack = [];
    this.stroke = null; // {last: {x, y}, erase: bool, id: pointerId}
    this.lastPoint = null; // end of the previous stroke, for Shift+click straight lines
    this.view = { zoom: 1, x: 0, y: 0 };
    this.padding = { left: 0, right: 0, top: 0, bottom: 0 }; // outpaint frame, in image pixels
    this.bindPointer();
    new ResizeObserver(() => this.fit()).observe(this.stage);
  }

  get hasImage() {
    return this.width > 0;
  }

  /** Show a new image: canvases take its size, the mask and its history start empty. */
  load(img) {
    this.width = img.naturalWidth;
    this.height = img.naturalHeight;
    for (const canvas of [this.imageCanvas, this.canvas]) {
      canvas.width = this.width;
      canvas.height = this.height;
    }
    this.imageCanvas.getContext("2d").drawImage(img, 0, 0);
    this.undoStack = [];
    this.redoStack = [];
    this.lastPoint = null;
    this.resetView();
    this.changed();
  }

  // Geometry: the box is scaled to fit the stage (plus the outpaint frame), then zoomed and panned.

  fit() {
    if (!this.hasImage) return;
    const pad = this.padding;
    const fullW = this.width + pad.left + pad.right;
    const fullH = this.height + pad.top + pad.bottom;
    const availW = Math.max(50, this.stage.clientWidth - 32);
    const availH = Math.max(50, this.stage.clientHeight - 32);
    const scale = Math.min(availW / fullW, availH / fullH, 4);
    this.scale = scale;
    Object.assign(this.box.style, {
      width: `${this.width * scale}px`,
      height: `${this.height * scale}px`,
      margin: `${pad.top * scale}px ${pad.right * scale}px ${pad.bottom * scale}px ${pad.left * scale}px`,
    });
    this.imageCanvas.style.width = `${this.width * scale}px`;
    this.imageCanvas.style.height = `${this.height * scale}px`;
    const frame = $("outpaint-frame");
    Object.assign(frame.style, {
      left: `${-pad.left * scale}px`, top: `${-pad.top * scale}px`,
      width: `${fullW * scale}px`, height: `${fullH * scale}px`,
    });
    this.updateCursorSize();
  }

  resetView() {
    this.view = { zoom: 1, x: 0, y: 0 };
    this.applyView();
    this.fit();
  }

  applyView() {
    const { zoom, x, y } = this.view;
    this.box.style.transformOrigin = "0 0";
    this.box.style.transform = zoom === 1 && !x && !y ? "" : `translate(${x}px, ${y}px) scale(${zoom})`;
  }

  /** Zoom by `factor` keeping the image point under (clientX, clientY) where it is. */
  zoomAt(factor, clientX, clientY) {
    const rect = this.box.getBoundingClientRect();
    const old = this.view.zoom;
    const zoom = Math.min(32, Math.max(0.25, old * factor));
    const px = (clientX - rect.left) / old;
    const py = (clientY - rect.top) / old;
    this.view.x += px * (old - zoom);
    this.view.y += py * (old - zoom);
    this.view.zoom = zoom;
    this.applyView();
  }

  /** Image-pixel coordinates of a pointer event (the canvas may be scaled, zoomed and panned). */
  toImage(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * this.width) / rect.width,
      y: ((event.clientY - rect.top) * this.height) / rect.height,
    };
  }

  // Painting.

  setTool(tool) {
    this.tool = tool;
    $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
    $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
    this.cursor.classList.toggle("eraser", tool === "eraser");
  }

  setSize(size) {
    this.size = Math.round(Math.min(400, Math.max(1, size)));
    $("brush-size").value = String(this.size);
    $("brush-size-value").value = String(this.size);
    this.updateCursorSize();
  }

  updateCursorSize() {
    const d = this.size * (this.scale ?? 1);
    this.cursor.style.width = `${d}px`;
    this.cursor.style.height = `${d}px`;
  }

  moveCursor(point) {
    this.cursor.hidden = false;
    this.cursor.style.left = `${point.x * this.scale}px`;
    this.cursor.style.top = `${point.y * this.scale}px`;
  }

  /** Pen pressure thins the line; mouse and touch paint at full size. */
  widthFor(event) {
    if (event.pointerType === "pen" && event.pressure > 0) return Math.max(1, this.size * event.pressure);
    return this.size;
  }

  paintSegment(from, to, width, erase) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = `rgb(${MASK_COLOR.join(",")})`;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = width;
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(to.x, to.y, width / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    }
    ctx.restore();
  }

  bindPointer() {
    const c = this.canvas;
    c.addEventListener("contextmenu", (e) => e.preventDefault()); // right button erases
    c.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    c.addEventListener("pointermove", (e) => this.onPointerMove(e));
    c.addEventListener("pointerup", (e) => this.onPointerUp(e));
    c.addEventListener("pointercancel", (e) => this.onPointerUp(e));
    c.addEventListener("pointerleave", () => { if (!this.stroke) this.cursor.hidden = true; });
    this.stage.addEventListener("wheel", (e) => {
      if (!this.hasImage) return;
      e.preventDefault();
      this.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX, e.clientY);
    }, { passive: false });
  }

  onPointerDown(event) {
    if (!this.hasImage || state.task !== "inpaint") return;
    // Middle button, or Space held: pan instead of painting.
    if (event.button === 1 || keys.space) {
      this.pan = { x: event.clientX, y: event.clientY, id: event.pointerId };
      this.canvas.setPointerCapture(event.pointerId);
      event.preventDefault();
      return;
    }
    if (event.button !== 0 && event.button !== 2 && event.button !== 5) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    const erase = this.tool === "eraser" || event.button === 2 || event.button === 5; // 5: the pen's eraser end
    const point = this.toImage(event);
    this.snapshot();
    const start = event.shiftKey && this.lastPoint ? this.lastPoint : point;
    this.paintSegment(start, point, this.widthFor(event), erase);
    this.stroke = { last: point, erase, id: event.pointerId };
    this.moveCursor(point);
  }

  onPointerMove(event) {
    if (!this.hasImage) return;
    if (this.pan && event.pointerId === this.pan.id) {
      this.view.x += event.clientX - this.pan.x;
      this.view.y += event.clientY - this.pan.y;
      this.pan.x = event.clientX;
      this.pan.y = event.clientY;
      this.applyView();
      return;
    }
    const point = this.toImage(event);
    if (state.task === "inpaint") this.moveCursor(point);
    if (!this.stroke || event.pointerId !== this.stroke.id) return;
    // Coalesced events keep fast pen and mouse strokes smooth instead of polygonal.
    const events = event.getCoalescedEvents?.() ?? [];
    for (const e of events.length ? events : [event]) {
      const p = this.toImage(e);
      this.paintSegment(this.stroke.last, p, this.widthFor(e), this.stroke.erase);
      this.stroke.last = p;
    }
  }

  onPointerUp(event) {
    if (this.pan && event.pointerId === this.pan.id) {
      this.pan = null;
      return;
    }
    if (!this.stroke || event.pointerId !== this.stroke.id) return;
    this.lastPoint = this.stroke.last;
    this.stroke = null;
    this.changed();
  }

  // History: a snapshot of the mask before every change; the depth follows the image size.

  snapshot() {
    const data = this.ctx.getImageData(0, 0, this.width, this.height);
    const depth = Math.max(5, Math.min(100, Math.floor(UNDO_BUDGET_BYTES / data.data.length)));
    this.undoStack.push(data);
    if (this.undoStack.length > depth) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(this.ctx.getImageData(0, 0, this.width, this.height));
    this.ctx.putImageData(this.undoStack.pop(), 0, 0);
    this.changed();
  }

  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(this.ctx.getImageData(0, 0, this.width, this.height));
    this.ctx.putImageData(this.redoStack.pop(), 0, 0);
    this.changed();
  }

  /** Rewrite every pixel's mask value with f(alpha) as one undoable step. */
  mapAlpha(f) {
    if (!this.hasImage) return;
    this.snapshot();
    const data = this.ctx.getImageData(0, 0, this.width, this.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      px[i] = MASK_COLOR[0];
      px[i + 1] = MASK_COLOR[1];
      px[i + 2] = MASK_COLOR[2];
      px[i + 3] = f(px[i + 3], i);
    }
    this.ctx.putImageData(data, 0, 0);
    this.changed();
  }

  invert() { this.mapAlpha((a) => 255 - a); }
  clear() { this.mapAlpha(() => 0); }
  fillAll() { this.mapAlpha(() => 255); }

  /** Use a mask image (white = fill), scaled to the image if its size differs. */
  loadMask(img) {
    const tmp = document.createElement("canvas");
    tmp.width = this.width;
    tmp.height = this.height;
    const tctx = tmp.getContext("2d", { willReadFrequently: true });
    tctx.drawImage(img, 0, 0, this.width, this.height);
    const src = tctx.getImageData(0, 0, this.width, this.height).data;
    // Luminance times alpha: a transparent area of a mask file keeps its pixels.
    this.mapAlpha((_, i) => Math.round(((src[i] * 299 + src[i + 1] * 587 + src[i + 2] * 114) / 1000) * (src[i + 3] / 255)));
  }

  /** Fraction of the image that will be filled (the server splits fill from keep at 128). */
  coverage() {
    if (!this.hasImage) return 0;
    const px = this.ctx.getImageData(0, 0, this.width, this.height).data;
    let count = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] >= 128) count++;
    return count / (this.width * this.height);
  }

  /** The mask as a black/white PNG data URL of the image's exact size (white = fill). */
  toDataURL() {
    const out = document.createElement("canvas");
    out.width = this.width;
    out.height = this.height;
    const octx = out.getContext("2d");
    const src = this.ctx.getImageData(0, 0, this.width, this.height).data;
    const data = octx.createImageData(this.width, this.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const v = src[i + 3] >= 128 ? 255 : 0;
      px[i] = px[i + 1] = px[i + 2] = v;
      px[i + 3] = 255;
    }
    octx.putImageData(data, 0, 0);
    return out.toDataURL("image/png");
  }

  changed() {
    $("undo").disabled = !this.undoStack.length;
    $("redo").disabled = !this.redoStack.length;
    if (this.hasImage) {
      const pct = this.coverage() * 100;
      $("mask-info").textContent = `${this.width} × ${this.height} px · mask covers ${pct < 0.1 && pct > 0 ? "<0.1" : pct.toFixed(1)}%`
        + " · wheel: zoom · Space/middle drag: pan · F: fit · right drag: erase";
    }
  }
}

const keys = { space: false };
let editor;
let control = null; // the Control panel (control.js)

// --- images in: file picker, drop, paste -----------------------------------------------------------

async function loadImageFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError(`${file.name || "the dropped file"} is not an image (type ${file.type || "unknown"})`);
    return;
  }
  try {
    const url = await readAsDataURL(file);
    const img = await loadImageElement(url);
    state.image = { file, url, width: img.naturalWidth, height: img.naturalHeight };
    editor.load(img);
    $("placeholder").hidden = true;
    $("canvas-box").hidden = false;
    $("image-info").textContent = `${file.name || "pasted image"} · ${img.naturalWidth} × ${img.naturalHeight}`;
    clearError();
    updateOutpaintPreview();
    editor.fit();
  } catch (err) {
    showError(err.message);
  }
}

async function loadMaskFile(file) {
  if (!file) return;
  if (!editor.hasImage) {
    showError("open the image first, then its mask");
    return;
  }
  try {
    const img = await loadImageElement(await readAsDataURL(file));
    editor.loadMask(img);
    const note = img.naturalWidth !== editor.width || img.naturalHeight !== editor.height
      ? ` (it was ${img.naturalWidth} × ${img.naturalHeight}; scaled to the image)` : "";
    $("image-info").textContent = `mask ${file.name}${note}`;
    clearError();
  } catch (err) {
    showError(err.message);
  }
}

function bindImageInputs() {
  $("image-file").addEventListener("change", (e) => { loadImageFile(e.target.files[0]); e.target.value = ""; });
  $("mask-file").addEventListener("change", (e) => { loadMaskFile(e.target.files[0]); e.target.value = ""; });
  const zone = $("dropzone");
  document.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) zone.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = [...(e.dataTransfer?.files ?? [])].find((f) => f.type.startsWith("image/"));
    if (file) loadImageFile(file);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files ?? [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      e.preventDefault();
      loadImageFile(file);
    }
  });
}

// --- tasks, engines and which fields show --------------------------------------------------------

function enginesFor(task) {
  const known = state.engines.length ? state.engines : TASK_ENGINES[task].map((name) => ({ name }));
  return known.filter((e) => (Array.isArray(e.tasks) ? e.tasks.includes(task) : TASK_ENGINES[task].includes(e.name)));
}

function engineKind(engine) {
  return CLASSICAL.has(engine) ? "classical" : engine === "diffusion" ? "diffusion" : "generative";
}

function setTask(task) {
  state.task = task;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.task === task));
    tab.tabIndex = tab.dataset.task === task ? 0 : -1;
  }
  $("controls").setAttribute("aria-labelledby", `tab-${task}`);
  fillEngineSelect();
  applyVisibility();
  updateOutpaintPreview();
  editor.fit();
}

function fillEngineSelect() {
  const select = $("engine");
  const previous = select.value;
  const engines = enginesFor(state.task);
  select.replaceChildren(...engines.map((e) => {
    const option = new Option(e.available === false ? `${e.name} (unavailable)` : e.name, e.name);
    option.title = e.available === false ? oneLine(e.error) : e.description ?? "";
    option.disabled = e.available === false;
    return option;
  }));
  const usable = (name) => engines.some((e) => e.name === name && e.available !== false);
  if (usable(previous)) select.value = previous;
  else if (usable(state.defaultEngine)) select.value = state.defaultEngine;
  else select.value = engines.find((e) => e.available !== false)?.name ?? "";
  fillModelList();
}

function fillModelList() {
  const engine = $("engine").value;
  const models = state.models.filter((m) => !m.engine || m.engine === engine);
  $("model-list").replaceChildren(...models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    if (m.description) option.label = m.description;
    return option;
  }));
}

/** Show exactly the controls the current task and engine read (data-tasks / data-engine-kind). */
function applyVisibility() {
  const task = state.task;
  const kind = engineKind($("engine").value);
  for (const el of document.querySelectorAll("[data-tasks], [data-engine-kind]")) {
    const tasks = el.dataset.tasks?.split(" ");
    const kinds = el.dataset.engineKind;
    const taskOk = !tasks || tasks.includes(task);
    const kindOk = !kinds || (kinds === "generative" ? kind !== "classical" : kinds === kind);
    el.hidden = !(taskOk && kindOk);
  }
  const painting = task === "inpaint";
  $("mask-canvas").hidden = !painting;
  $("brush-cursor").hidden = true;
  $("canvas-box").classList.toggle("no-paint", !painting);
  $("outpaint-frame").hidden = task !== "outpaint";
}

// --- outpaint sides --------------------------------------------------------------------------------

function chosenSides() {
  return [...document.querySelectorAll("[data-side]")].filter((c) => c.checked).map((c) => c.dataset.side);
}

function extendByFraction() {
  return $("extend-fraction").checked;
}

/** Pixels added per side, as the server will compute them (a fraction is of the size along that axis). */
function outpaintPixels() {
  const pad = { left: 0, right: 0, top: 0, bottom: 0 };
  if (!state.image) return pad;
  const frac = Number($("extend-frac").value) || 0;
  const px = Math.max(0, Math.round(Number($("extend-px").value) || 0));
  for (const side of chosenSides()) {
    const along = side === "left" || side === "right" ? state.image.width : state.image.height;
    pad[side] = extendByFraction() ? Math.round(along * frac) : px;
  }
  return pad;
}

function updateOutpaintPreview() {
  for (const el of document.querySelectorAll("[data-extend]")) el.hidden = el.dataset.extend !== (extendByFraction() ? "fraction" : "pixels");
  const pad = state.task === "outpaint" ? outpaintPixels() : { left: 0, right: 0, top: 0, bottom: 0 };
  editor.padding = pad;
  editor.fit();
  if (state.image) {
    const w = state.image.width + pad.left + pad.right;
    const h = state.image.height + pad.top + pad.bottom;
    $("outpaint-size").textContent = chosenSides().length
      ? `${state.image.width} × ${state.image.height} → ${extendByFraction() ? "about " : ""}${w} × ${h}`
      : "choose at least one side";
  }
}

// --- building the request ----------------------------------------------------------------------------

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? null : Number(raw);
}

/** The JSON body of POST /api/v1/{task}: only the fields this task and engine read. */
function buildRequest() {
  const task = state.task;
  const engine = $("engine").value;
  const kind = engineKind(engine);
  const body = { engine };
  const seed = numberField("seed");
  if (seed !== null) body.seed = seed;
  if (TASKS_WITH_IMAGE.has(task)) {
    if (!state.image) throw new ApiError(`${task} needs an image: drop one here, paste it or use "Open image…"`, "image");
    body.image = state.image.url;
  }
  if (kind !== "classical") {
    const model = $("model").value.trim();
    if (model) body.model = model;
  }
  if (kind === "diffusion" && $("scheduler").value && task !== "understand") body.scheduler = $("scheduler").value;
  if (kind !== "classical" && task !== "understand") {
    const prompt = task === "edit" ? $("instruction").value : $("prompt").value;
    if (prompt.trim()) body.prompt = prompt;
    if ($("negative").value.trim()) body.negative_prompt = $("negative").value;
    // Outpaint's `steps` counts extension steps; its denoising steps are `sampling_steps`.
    body[task === "outpaint" ? "sampling_steps" : "steps"] = numberField("steps");
    body.guidance_scale = numberField("guidance");
    if (task === "inpaint" || task === "outpaint") body.strength = numberField("strength");
  }
  ({ inpaint: addInpaint, outpaint: addOutpaint, edit: addEdit, generate: addGenerate, understand: addUnderstand })[task](body);
  if (kind === "diffusion") control?.addTo(body, task);
  return body;
}

function addInpaint(body) {
  if (editor.coverage() === 0) {
    throw new ApiError("the mask is empty: paint over the area to fill (or load a mask file)", "mask");
  }
  body.mask = editor.toDataURL();
}

function addOutpaint(body) {
  const sides = chosenSides();
  if (!sides.length) throw new ApiError("choose at least one side to extend", "left");
  if (extendByFraction()) {
    body.expand = numberField("extend-frac");
    body.direction = sides;
  } else {
    const px = numberField("extend-px");
    if (!px || px < 1) throw new ApiError("pixels per side must be at least 1", "left");
    for (const side of sides) body[side] = px;
  }
}

function addEdit(body) {
  if (!$("instruction").value.trim()) throw new ApiError('edit needs an instruction, e.g. "make it winter"', "instruction");
  body.prompt = $("instruction").value;
  body.image_guidance_scale = numberField("image-guidance");
}

function addGenerate(body) {
  if (!$("prompt").value.trim()) throw new ApiError("generate needs a prompt", "prompt");
  const width = numberField("width");
  const height = numberField("height");
  if (width !== null) body.width = width;
  if (height !== null) body.height = height;
}

function addUnderstand(body) {
  const questions = $("questions").value.split("\n").map((q) => q.trim()).filter(Boolean);
  if (!questions.length) throw new ApiError("ask at least one question (one per line)", "questions");
  body.questions = questions;
}

/** What the input looked like, kept per job so the result can be compared with it. */
function beforeOf(task) {
  if (!state.image || !TASKS_WITH_IMAGE.has(task)) return null;
  const sides = task === "outpaint" ? chosenSides() : [];
  return { url: state.image.url, width: state.image.width, height: state.image.height, sides };
}

// --- running a job and following its events -----------------------------------------------------------

async function run(event) {
  event?.preventDefault();
  if (state.job) return; // one job at a time from this page; the queue serves other clients
  clearError();
  let body;
  try {
    body = buildRequest();
  } catch (err) {
    showError(err.message, err.field);
    return;
  }
  setRunning(true);
  setProgress({ text: "submitting…" });
  try {
    const job = await api(`/api/v1/${state.task}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    state.before.set(job.id, beforeOf(state.task));
    follow(job);
  } catch (err) {
    setRunning(false);
    showError(err.message, err.field);
  }
}

function setRunning(running) {
  $("run").disabled = running;
  $("cancel").hidden = !running;
  $("cancel").disabled = false;
  $("progress-box").hidden = !running;
}

function setProgress({ step, total, text }) {
  const bar = $("progress");
  if (total) {
    bar.max = total;
    bar.value = step;
  } else {
    bar.removeAttribute("value"); // indeterminate while queued or without step counts
  }
  $("progress-text").textContent = text ?? `step ${step} / ${total}`;
}

function showStatus(status, position) {
  if (status === "queued") {
    setProgress({ text: position ? `queued · position ${position}` : "queued · next" });
  } else if (status === "running") {
    setProgress({ text: "running…" });
  }
}

function follow(job) {
  state.job = job;
  showStatus(job.status, job.position);
  const source = new EventSource(job.links?.events ?? `/api/v1/jobs/${job.id}/events`);
  state.events = source;
  source.addEventListener("progress", (e) => {
    const { step, total } = JSON.parse(e.data);
    setProgress({ step, total });
  });
  source.addEventListener("status", (e) => {
    const { status, position } = JSON.parse(e.data);
    showStatus(status, position);
  });
  source.addEventListener("done", (e) => {
    source.close();
    finish(JSON.parse(e.data));
  });
  // A dropped stream (tunnel hiccup, proxy) falls back to polling, so the result is never lost.
  source.onerror = () => {
    if (state.events !== source) return;
    source.close();
    poll(job.id);
  };
}

async function poll(id) {
  try {
    const job = await api(`/api/v1/jobs/${id}`);
    if (TERMINAL.has(job.status)) {
      finish(job);
      return;
    }
    if (job.progress?.total) setProgress(job.progress);
    else showStatus(job.status, job.position);
  } catch (err) {
    $("progress-text").textContent = `${err.message}; retrying…`;
  }
  state.pollTimer = setTimeout(() => poll(id), 1000);
}

async function cancel() {
  if (!state.job) return;
  $("cancel").disabled = true;
  try {
    await api(state.job.links?.cancel ?? `/api/v1/jobs/${state.job.id}/cancel`, { method: "POST" });
    setProgress({ text: "cancelling…" });
  } catch (err) {
    showError(err.message);
    $("cancel").disabled = false;
  }
}

function finish(job) {
  if (!state.job || state.job.id !== job.id) return;
  state.events?.close();
  state.events = null;
  clearTimeout(state.pollTimer);
  state.job = null;
  setRunning(false);
  if (job.status === "done") showResult(job);
  else if (job.status === "failed") showError(job.error ?? "the job failed");
  else if (job.status === "cancelled") {
    $("progress-box").hidden = false;
    setProgress({ text: "cancelled" });
    $("progress").value = 0;
  }
  refreshHistory();
}

// --- results -------------------------------------------------------------------------------------

/** The input drawn on the result's canvas, so an outpainted result lines up with what it grew from. */
async function beforeImageFor(before, width, height) {
  if (!before) return null;
  if (before.width === width && before.height === height) return before.url;
  const sides = new Set(before.sides);
  const dx = width - before.width;
  const dy = height - before.height;
  const x = sides.has("left") ? (sides.has("right") ? Math.round(dx / 2) : dx) : 0;
  const y = sides.has("top") ? (sides.has("bottom") ? Math.round(dy / 2) : dy) : 0;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const img = await loadImageElement(before.url);
  // Same-size sources (edit at another size) are stretched; outpaint inputs sit at their offset.
  if (!sides.size) canvas.getContext("2d").drawImage(img, 0, 0, width, height);
  else canvas.getContext("2d").drawImage(img, x, y);
  return canvas.toDataURL("image/png");
}

async function showResult(job) {
  state.shownJob = job;
  const panel = $("result");
  panel.hidden = false;
  const image = job.result?.images?.[0];
  const answers = job.result?.answers ?? [];
  const compare = $("compare");
  compare.hidden = !image;
  $("download").hidden = !image;
  $("use-result").hidden = !image;
  $("reuse-seed").hidden = image?.seed == null;
  $("result-info").textContent = image ? `${job.task} · seed ${image.seed}` : job.task;
  renderAnswers(answers);
  if (!image) {
    $("compare-label").hidden = true;
    return;
  }
  $("download").href = image.url;
  $("download").setAttribute("download", image.url.split("/").pop());
  const result = $("result-img");
  result.src = image.url;
  await result.decode().catch(() => {});
  const before = await beforeImageFor(state.before.get(job.id), result.naturalWidth, result.naturalHeight).catch(() => null);
  compare.style.aspectRatio = `${result.naturalWidth || 1} / ${result.naturalHeight || 1}`;
  compare.classList.toggle("single", !before);
  $("compare-label").hidden = !before;
  $("before-img").hidden = !before;
  if (before) $("before-img").src = before;
  $("result-info").textContent += ` · ${result.naturalWidth} × ${result.naturalHeight}`;
  setSplit(Number($("compare-slider").value));
}

function renderAnswers(answers) {
  const list = $("answers");
  list.hidden = !answers.length;
  list.replaceChildren(...answers.map((a) => {
    const li = document.createElement("li");
    if (typeof a === "string") {
      li.textContent = a;
    } else {
      const q = document.createElement("span");
      q.className = "q";
      q.textContent = a.question ?? "";
      li.append(q, document.createTextNode(a.answer ?? JSON.stringify(a)));
    }
    return li;
  }));
}

/** The slider's value is how much of the "before" image shows, from the left. */
function setSplit(percent) {
  $("compare").style.setProperty("--split", `${percent}%`);
}

async function useResultAsInput() {
  const url = state.shownJob?.result?.images?.[0]?.url;
  if (!url) return;
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`cannot fetch the result (${response.status})`);
    const blob = await response.blob();
    await loadImageFile(new File([blob], url.split("/").pop(), { type: blob.type || "image/png" }));
  } catch (err) {
    showError(err.message);
  }
}

// --- history ---------------------------------------------------------------------------------------

async function refreshHistory() {
  let jobs;
  try {
    jobs = (await api("/api/v1/jobs?limit=20"))?.jobs ?? [];
  } catch {
    return; // the status line already says when the server is unreachable
  }
  $("history").replaceChildren(...jobs.map(historyItem));
}

function historyItem(job) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  const when = job.created ? new Date(job.created).toLocaleTimeString() : "";
  button.setAttribute("aria-label", `${job.task} ${job.status} ${when}`.trim());
  button.title = `${job.task} · ${job.status} · ${when}${job.error ? ` · ${job.error}` : ""}`;
  const image = job.result?.images?.[0];
  if (image) {
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = "";
    img.loading = "lazy";
    button.append(img);
  } else {
    const span = document.createElement("span");
    span.className = `status-${job.status}`;
    span.textContent = job.status;
    button.append(span);
  }
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = job.task;
  button.append(badge);
  button.addEventListener("click", async () => {
    const fresh = await api(`/api/v1/jobs/${job.id}`).catch(() => job);
    if (fresh.status === "done") showResult(fresh);
    else if (fresh.error) showError(fresh.error);
  });
  li.append(button);
  return li;
}

// --- server lists and status -----------------------------------------------------------------------

async function loadServerLists() {
  const [engines, models, samplers] = await Promise.allSettled([
    api("/api/v1/engines"), api("/api/v1/models"), api("/api/v1/samplers"),
  ]);
  if (engines.status === "fulfilled") {
    state.engines = listFrom(engines.value, "engines");
    state.defaultEngine = engines.value?.default ?? null;
  }
  else showError(engines.reason.message);
  if (models.status === "fulfilled") state.models = listFrom(models.value, "models");
  if (samplers.status === "fulfilled") {
    const options = listFrom(samplers.value, "samplers").map((s) => new Option(s.name, s.name));
    $("scheduler").replaceChildren(new Option("model default", ""), ...options);
  }
  fillEngineSelect();
  applyVisibility();
}

async function refreshHealth() {
  const el = $("health");
  try {
    const h = await api("/api/v1/health");
    el.textContent = `canvaslab ${h.version ?? ""} · queue ${h.queue ?? 0} · workers ${h.workers ?? "?"}`;
    el.className = "health ok";
  } catch (err) {
    el.textContent = err.message;
    el.className = "health bad";
  }
}

// --- keyboard ----------------------------------------------------------------------------------------

function isTyping(target) {
  return target.matches?.("textarea, select, input:not([type=range]):not([type=checkbox]):not([type=radio]):not([type=file])");
}

function onKeyDown(e) {
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key === "Enter") {
    run(e);
    return;
  }
  if (isTyping(e.target)) return;
  const key = e.key.toLowerCase();
  if (mod && key === "z") {
    e.preventDefault();
    if (e.shiftKey) editor.redo();
    else editor.undo();
  } else if (mod && key === "y") {
    e.preventDefault();
    editor.redo();
  } else if (mod || e.altKey) {
    return;
  } else if (e.key === "[" || e.key === "]") {
    const step = Math.max(1, Math.round(editor.size * 0.15));
    editor.setSize(editor.size + (e.key === "]" ? step : -step));
  } else if (key === "b") editor.setTool("brush");
  else if (key === "e") editor.setTool("eraser");
  else if (key === "x") editor.setTool(editor.tool === "brush" ? "eraser" : "brush");
  else if (key === "i") editor.invert();
  else if (key === "m") {
    $("mask-visible").checked = !$("mask-visible").checked;
    updateMaskDisplay();
  } else if (key === "f") editor.resetView();
  else if (e.key === "Delete") editor.clear();
  else if (e.key === " ") {
    keys.space = true;
    e.preventDefault();
  }
}

function updateMaskDisplay() {
  const visible = $("mask-visible").checked;
  $("mask-canvas").style.opacity = visible ? String(Number($("mask-opacity").value) / 100) : "0";
}

// --- wiring --------------------------------------------------------------------------------------------

function bindControls() {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => setTask(tab.dataset.task));
  document.querySelector(".tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    const tabs = [...document.querySelectorAll("[role=tab]")];
    const i = tabs.findIndex((t) => t.dataset.task === state.task);
    const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    setTask(next.dataset.task);
    next.focus();
  });
  $("controls").addEventListener("submit", run);
  $("cancel").addEventListener("click", cancel);
  $("engine").addEventListener("change", () => { fillModelList(); applyVisibility(); });
  $("seed-random").addEventListener("click", () => { $("seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0]); });
  $("tool-brush").addEventListener("click", () => editor.setTool("brush"));
  $("tool-eraser").addEventListener("click", () => editor.setTool("eraser"));
  $("brush-size").addEventListener("input", (e) => editor.setSize(Number(e.target.value)));
  $("undo").addEventListener("click", () => editor.undo());
  $("redo").addEventListener("click", () => editor.redo());
  $("invert").addEventListener("click", () => editor.invert());
  $("clear").addEventListener("click", () => editor.clear());
  $("fill-all").addEventListener("click", () => editor.fillAll());
  $("mask-opacity").addEventListener("input", updateMaskDisplay);
  $("mask-visible").addEventListener("change", updateMaskDisplay);
  $("compare-slider").addEventListener("input", (e) => setSplit(Number(e.target.value)));
  $("use-result").addEventListener("click", useResultAsInput);
  $("reuse-seed").addEventListener("click", () => { $("seed").value = String(state.shownJob?.result?.images?.[0]?.seed ?? ""); });
  $("history-refresh").addEventListener("click", refreshHistory);
  for (const el of document.querySelectorAll("[data-side], [name=extend-by], #extend-px, #extend-frac")) {
    el.addEventListener("input", updateOutpaintPreview);
    el.addEventListener("change", updateOutpaintPreview);
  }
  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("keyup", (e) => { if (e.key === " ") keys.space = false; });
}

/** The server set the token cookie when the page was opened with ?token=; keep it out of the address bar. */
function dropTokenFromAddress() {
  const url = new URL(location.href);
  if (!url.searchParams.has("token")) return;
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

function main() {
  dropTokenFromAddress();
  editor = new MaskEditor();
  installSelect(editor, {
    api, showError, clearError, isTyping, maskColor: MASK_COLOR, isActive: () => state.task === "inpaint",
  });
  control = installControl({
    api, showError, clearError, readAsDataURL, inputImage: () => state.image?.url ?? null,
    mask: () => (editor.coverage() > 0 ? editor.toDataURL() : null),
  });
  control.load().then(applyVisibility);
  bindImageInputs();
  bindControls();
  setTask("inpaint");
  updateMaskDisplay();
  loadServerLists();
  refreshHealth();
  refreshHistory();
  setInterval(refreshHealth, 15000);
}

main();
