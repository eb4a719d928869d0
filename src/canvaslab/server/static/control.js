// The Control panel: one ControlNet unit for inpaint, outpaint and generate on the diffusion engine.
// The server's ControlNets come from /controlnet/model_list, the preprocessors and their settings from
// /controlnet/module_list; "Preview map" asks /controlnet/detect for the map the ControlNet will get.
// The unit goes into the request as the native `control` field (docs/control.md); without a control
// image of its own it uses the input image.

/**
 * Fill the `#control-panel` fieldset and return {addTo(body, task), load()}. `ui` gives the page's
 * helpers: api(path, options), showError(message, field), clearError(), readAsDataURL(blob),
 * inputImage() (the input image's data URL or null) and mask() (the painted mask's data URL or null).
 */
export function installControl(ui) {
  const $ = (id) => document.getElementById(id);
  const panel = $("control-panel");
  panel.innerHTML = `
    <legend>Control</legend>
    <div class="field"><label for="control-model">ControlNet</label>
      <select id="control-model"><option value="">none</option></select>
    </div>
    <div class="field"><label for="control-image">Control image</label>
      <input type="file" id="control-image" accept="image/*">
      <p id="control-image-info" class="hint">none: the input image</p>
    </div>
    <div class="field"><label for="control-preprocessor">Preprocessor</label>
      <select id="control-preprocessor"><option value="none">none</option></select>
    </div>
    <div class="row">
      <div class="field" id="control-a-field" hidden><label for="control-a" id="control-a-label">Setting A</label>
        <input type="number" id="control-a" step="any">
      </div>
      <div class="field" id="control-b-field" hidden><label for="control-b" id="control-b-label">Setting B</label>
        <input type="number" id="control-b" step="any">
      </div>
    </div>
    <div class="field"><label for="control-weight">Control weight</label>
      <input type="number" id="control-weight" min="0" max="2" step="0.05" value="1">
    </div>
    <button type="button" id="control-preview">Preview map</button>
    <img id="control-map" class="control-map" alt="Control map" hidden>`;
  const details = {}; // preprocessor -> {sliders: [{name, value, min, max}]}
  let controlImage = null; // data URL of the chosen control image

  function showSettings() {
    const sliders = details[$("control-preprocessor").value]?.sliders ?? [];
    for (const [index, key] of ["a", "b"].entries()) {
      const slider = sliders[index];
      $(`control-${key}-field`).hidden = !slider;
      if (!slider) continue;
      $(`control-${key}-label`).textContent = slider.name.charAt(0).toUpperCase() + slider.name.slice(1);
      Object.assign($(`control-${key}`), { min: slider.min, max: slider.max, value: slider.value });
    }
  }

  function setting(key) {
    if ($(`control-${key}-field`).hidden) return null;
    const raw = $(`control-${key}`).value.trim();
    return raw === "" ? null : Number(raw);
  }

  async function load() {
    let models = null;
    let modules = null;
    try {
      [models, modules] = await Promise.all([ui.api("/controlnet/model_list"), ui.api("/controlnet/module_list")]);
    } catch {
      models = null; // a server without the routes: no panel
    }
    const names = models?.canvaslab?.controlnets ?? [];
    if (!names.length) { // nothing to control with: the panel stays away whatever the task
      delete panel.dataset.tasks;
      delete panel.dataset.engineKind;
      panel.hidden = true;
      return;
    }
    $("control-model").append(...names.map((name) => new Option(name, name)));
    Object.assign(details, modules?.module_detail ?? {});
    $("control-preprocessor").replaceChildren(...Object.keys(details).map((name) => new Option(name, name)));
    showSettings();
  }

  async function preview() {
    ui.clearError();
    const image = controlImage ?? ui.inputImage();
    if (!image) {
      ui.showError("the preview needs an image: open one, or choose a control image", "control");
      return;
    }
    const module = $("control-preprocessor").value;
    const body = { controlnet_module: module, controlnet_input_images: [image] };
    const mask = module === "inpaint" && !controlImage ? ui.mask() : null;
    if (mask) body.controlnet_masks = [mask];
    for (const key of ["a", "b"]) {
      if (setting(key) !== null) body[`controlnet_threshold_${key}`] = setting(key);
    }
    try {
      const made = await ui.api("/controlnet/detect", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
      $("control-map").src = `data:image/png;base64,${made.images[0]}`;
      $("control-map").hidden = false;
    } catch (err) {
      ui.showError(err.message, "control");
    }
  }

  $("control-preprocessor").addEventListener("change", () => {
    showSettings();
    $("control-map").hidden = true;
  });
  $("control-image").addEventListener("change", async (event) => {
    const file = event.target.files?.[0];
    controlImage = file ? await ui.readAsDataURL(file) : null;
    $("control-image-info").textContent = file ? file.name : "none: the input image";
    $("control-map").hidden = true;
  });
  $("control-preview").addEventListener("click", preview);

  return {
    load,
    /** Add the unit to a request body (nothing when no ControlNet is chosen or the task takes none). */
    addTo(body, task) {
      const model = $("control-model").value;
      if (!model || panel.hidden || !["inpaint", "outpaint", "generate"].includes(task)) return;
      const unit = { model, weight: Number($("control-weight").value), preprocessor: $("control-preprocessor").value };
      if (controlImage) unit.image = controlImage;
      for (const key of ["a", "b"]) {
        if (setting(key) !== null) unit[`threshold_${key}`] = setting(key);
      }
      body.control = [unit];
    },
  };
}
