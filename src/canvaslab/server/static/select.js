// The Select tool: click an object and Segment Anything proposes its mask (POST /api/v1/mask).
// Click = a point on the object, right-click or Alt+click = a point not on it; every click asks again
// with all points so far. The proposal is drawn in its own colour over the image; "Add" puts it into
// the painted mask, "Subtract" takes it out (one undo step each), Esc drops the points.
// The server keeps the image's embedding between clicks, so only the first click waits for the encoder.

const PROPOSAL_COLOR = [40, 200, 255]; // cyan: unlike the mask's tint
const POSITIVE = "#2ecc40";
const NEGATIVE = "#ff4136";

/**
 * Wire the Select tool into `editor` (app.js' MaskEditor). `ui` gives the page's helpers:
 * api(path, options), showError(message, field), clearError(), isActive() (the task paints a mask),
 * isTyping(target) (a keystroke belongs to a text field) and maskColor (the painted mask's tint).
 */
export function installSelect(editor, ui) {
  const $ = (id) => document.getElementById(id);
  const button = $("tool-select");
  const box = $("canvas-box");
  const overlay = document.createElement("canvas");
  overlay.id = "select-canvas";
  overlay.setAttribute("aria-label", "Selection proposal");
  box.insertBefore(overlay, $("brush-cursor"));
  const octx = overlay.getContext("2d", { willReadFrequently: true });
  const actions = document.createElement("span");
  actions.className = "select-actions";
  actions.hidden = true;
  actions.innerHTML = '<button type="button" id="select-add" disabled title="Add the proposal to the mask (Enter)">Add</button>'
    + '<button type="button" id="select-subtract" disabled title="Take the proposal out of the mask (Shift+Enter)">Subtract</button>'
    + '<span id="select-info" class="hint" role="status" aria-live="polite"></span>';
  button.after(actions);

  const sel = { points: [], proposal: null, imageURL: null, asked: 0, busy: false };

  const active = () => editor.tool === "select";

  // The editor's own tools switch the Select tool off; a new image drops the points.
  const setTool = editor.setTool.bind(editor);
  editor.setTool = (tool) => {
    setTool(tool);
    button.setAttribute("aria-pressed", String(tool === "select"));
    box.classList.toggle("selecting", tool === "select");
    actions.hidden = tool !== "select";
    if (tool !== "select") reset();
  };
  const load = editor.load.bind(editor);
  editor.load = (img) => {
    load(img);
    sel.imageURL = null;
    reset();
  };

  function status(text) {
    $("select-info").textContent = text;
  }

  function reset() {
    sel.points = [];
    sel.proposal = null;
    sel.asked += 1; // answers to earlier clicks are dropped
    overlay.width = editor.width || 1;
    overlay.height = editor.height || 1;
    $("select-add").disabled = $("select-subtract").disabled = true;
    status(active() ? "click the object; right-click or Alt+click where it is not" : "");
  }

  /** Proposal tint plus the clicked points, at the image's resolution. */
  function draw() {
    overlay.width = editor.width;
    overlay.height = editor.height;
    if (sel.proposal) {
      const data = octx.createImageData(editor.width, editor.height);
      const px = data.data;
      for (let i = 0; i < px.length; i += 4) {
        if (sel.proposal[i >> 2]) {
          px[i] = PROPOSAL_COLOR[0];
          px[i + 1] = PROPOSAL_COLOR[1];
          px[i + 2] = PROPOSAL_COLOR[2];
          px[i + 3] = 140;
        }
      }
      octx.putImageData(data, 0, 0);
    }
    const radius = Math.max(2, Math.round(Math.max(editor.width, editor.height) / 120));
    for (const p of sel.points) {
      octx.beginPath();
      octx.arc(p.x, p.y, radius, 0, Math.PI * 2);
      octx.fillStyle = p.positive ? POSITIVE : NEGATIVE;
      octx.fill();
      octx.lineWidth = Math.max(1, radius / 3);
      octx.strokeStyle = "#fff";
      octx.stroke();
    }
  }

  async function propose() {
    const ask = ++sel.asked;
    sel.imageURL ??= editor.imageCanvas.toDataURL("image/png");
    const body = {
      image: sel.imageURL,
      points: sel.points.filter((p) => p.positive).map((p) => [p.x, p.y]),
      negative_points: sel.points.filter((p) => !p.positive).map((p) => [p.x, p.y]),
      multimask: sel.points.length === 1, // one click is ambiguous: SAM's best of three
    };
    if (!body.points.length) {
      status("add a point on the object (left click)");
      return;
    }
    status("asking Segment Anything…");
    try {
      const answer = await ui.api("/api/v1/mask", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (ask !== sel.asked) return;
      sel.proposal = await pixelsOf(answer.mask);
      if (ask !== sel.asked) return;
      ui.clearError();
      $("select-add").disabled = $("select-subtract").disabled = false;
      const pct = answer.coverage * 100;
      status(`proposal covers ${pct > 0 && pct < 0.1 ? "<0.1" : pct.toFixed(1)}% · ${sel.points.length} point(s)`
        + ` · ${answer.embedding_cached ? "embedding reused" : "image embedded"} · Enter: add · Shift+Enter: subtract · Esc: clear`);
      draw();
    } catch (err) {
      if (ask !== sel.asked) return;
      status("");
      ui.showError(err.message, err.field);
    }
  }

  /** A mask PNG (data as base64) -> Uint8Array of 0/1 per image pixel (white = in). */
  async function pixelsOf(base64) {
    const img = new Image();
    img.src = `data:image/png;base64,${base64}`;
    await img.decode();
    const tmp = document.createElement("canvas");
    tmp.width = editor.width;
    tmp.height = editor.height;
    const tctx = tmp.getContext("2d", { willReadFrequently: true });
    tctx.drawImage(img, 0, 0, editor.width, editor.height);
    const src = tctx.getImageData(0, 0, editor.width, editor.height).data;
    const out = new Uint8Array(editor.width * editor.height);
    for (let i = 0; i < out.length; i++) out[i] = src[i * 4] >= 128 ? 1 : 0;
    return out;
  }

  /** Put the proposal into the painted mask (or take it out), as one undoable step. */
  function apply(subtract) {
    if (!sel.proposal) return;
    editor.snapshot();
    const data = editor.ctx.getImageData(0, 0, editor.width, editor.height);
    const px = data.data;
    const tint = ui.maskColor;
    for (let i = 0; i < sel.proposal.length; i++) {
      if (!sel.proposal[i]) continue;
      const j = i * 4;
      px[j] = tint[0];
      px[j + 1] = tint[1];
      px[j + 2] = tint[2];
      px[j + 3] = subtract ? 0 : 255;
    }
    editor.ctx.putImageData(data, 0, 0);
    editor.changed();
    reset();
  }

  // Clicks on the canvas box are caught before the editor's painting handlers see them.
  box.addEventListener("pointerdown", (event) => {
    if (!active() || !ui.isActive() || !editor.hasImage) return;
    if (event.button === 1) return; // middle drag pans as always
    event.stopPropagation();
    event.preventDefault();
    if (event.button !== 0 && event.button !== 2) return;
    const p = editor.toImage(event);
    if (p.x < 0 || p.y < 0 || p.x >= editor.width || p.y >= editor.height) return;
    sel.points.push({ x: Math.round(p.x * 10) / 10, y: Math.round(p.y * 10) / 10, positive: event.button === 0 && !event.altKey });
    draw();
    propose();
  }, { capture: true });

  button.addEventListener("click", () => editor.setTool("select"));
  $("select-add").addEventListener("click", () => apply(false));
  $("select-subtract").addEventListener("click", () => apply(true));
  document.addEventListener("keydown", (e) => {
    if (ui.isTyping(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key.toLowerCase() === "s" && !e.shiftKey) editor.setTool("select");
    else if (!active()) return;
    else if (e.key === "Enter" && sel.proposal) {
      e.preventDefault();
      apply(e.shiftKey);
    } else if (e.key === "Escape") reset();
  });
}
