// The generate form: every native field, the library's models, uploads for image-to-image,
// ControlNet units and the IP-Adapter; "Use these settings" fills it from a task.
"use strict";

const SAMPLERS = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M",
  "DPM++ SDE", "DPM fast", "DPM adaptive", "LMS Karras", "DPM2 Karras", "DPM2 a Karras",
  "DPM++ 2S a Karras", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "UniPC"];
// The flow-matching families that run (see catalog/families.py): their samplers, usual steps
// and guidance, their distilled guidance (false: none steers them), whether the source
// image is the image to edit (an editing model: no strength; a mask edits inside it), and
// whether the hires fix takes the image upscalers only.
const FLOW_SAMPLERS = ["Euler", "Euler a", "Heun", "DPM2", "DPM++ 2M"];
const SCHEDULED = ["Euler", "Euler a", "DPM++ 2M"];  // those a pipeline's own loop runs
const FLOW = new Map([
  ["flux1", { samplers: FLOW_SAMPLERS, steps: 28, guidance: 1, distilled: 3.5 }],
  ["flux1-schnell", { samplers: FLOW_SAMPLERS, steps: 4, guidance: 1, distilled: false }],
  ["flux1-kontext", { samplers: SCHEDULED, steps: 28, guidance: 1, distilled: 2.5, edits: true }],
  ["flux2-klein", { samplers: SCHEDULED, steps: 4, guidance: 1, distilled: false, edits: true }],
  ["flux2", { samplers: SCHEDULED, steps: 50, guidance: 1, distilled: 4, edits: true }],
  ["sd3", { samplers: SCHEDULED, steps: 28, guidance: 3.5, distilled: false }],
  ["z-image", { samplers: SCHEDULED, steps: 9, guidance: 1, distilled: false, pixelHires: true }],
  ["qwen-image", { samplers: SCHEDULED, steps: 50, guidance: 4, distilled: false, pixelHires: true }],
  ["qwen-image-edit", { samplers: SCHEDULED, steps: 50, guidance: 4, distilled: false, edits: true }],
]);
// The families that take another's extras (Architecture.lora_family): the same transformer.
const EXTRAS_OF = new Map([["flux1-schnell", "flux1"], ["flux1-kontext", "flux1"],
  ["qwen-image-edit", "qwen-image"], ["flux2-klein", "flux2"]]);
const SIZES = [[512, 512], [768, 512], [512, 768], [768, 768], [1024, 1024], [1216, 832],
  [832, 1216], [256, 256], [64, 64]];
const FORM_FIELDS = ["prompt", "negative_prompt", "model", "sampler", "steps", "width", "height",
  "seed", "n_images", "guidance", "distilled_guidance", "subseed", "subseed_strength", "clip_skip",
  "output_format"];
const MAX_UNITS = 3;
// The library, as the choices offer it; families: "kind/name" → the family it was made for.
const library = { loras: [], controlnet: [], ipadapter: [], preprocessors: [], families: new Map() };
// The chosen LoRAs: {name, weight input}; the uploaded source image; the ControlNet units.
let chosenLoras = [];
let source = null;
let ipImage = null;

const form = $("generate-form");
const options = (select, values, empty) => select.replaceChildren(
  ...(empty ? [new Option(t(empty), "")] : []), ...values.map((v) => new Option(v, v)));

async function fillChoices() {
  // Each kind's entries, their families noted (see fits).
  const entries = async (kind) => {
    const listed = (await api("GET", `/models?kind=${kind}`)).data;
    for (const m of listed) library.families.set(`${kind}/${m.name}`, m.architecture);
    return listed;
  };
  const names = async (kind) => (await entries(kind)).map((m) => m.name);
  const [models, loras, vaes, embeddings, controlnets, adapters, preprocessors, trained, newest,
    styles, upscalers] = await Promise.all([entries("checkpoints"), names("loras"), names("vae"),
    names("embeddings"), names("controlnet"), names("ipadapter"), api("GET", "/preprocessors"),
    api("GET", "/trained-models"), api("GET", "/tasks?limit=1"), api("GET", "/styles"),
    names("upscalers")]);
  // The library's model upscalers join the hires fix's built-in ones.
  for (const option of $("hires-upscaler").querySelectorAll("option[data-model]")) option.remove();
  for (const name of upscalers) {
    const option = document.createElement("option");
    option.textContent = name;
    option.dataset.model = "";
    $("hires-upscaler").append(option);
  }
  // The server's prompt styles (styles.csv), each box showing what it adds.
  $("styles").replaceChildren($("styles").firstElementChild, ...styles.map((style) => {
    const label = document.createElement("label");
    label.className = "check";
    label.title = [style.prompt, style.negative_prompt].filter(Boolean).join(" | ");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = style.name;
    label.append(box, ` ${style.name}`);
    return label;
  }));
  $("styles").hidden = styles.length === 0;
  // A refiner only continues another model's image: it is offered as a refiner, not a model.
  const refining = (m) => m.architecture === "sdxl-refiner";
  const checkpoints = models.filter((m) => !refining(m)).map((m) => m.name);
  options($("model"), checkpoints);
  // The picker names each model's family: "demo-flux · FLUX.1".
  for (const option of $("model").options) {
    const model = models.find((m) => m.name === option.value);
    if (model && model.label !== "unknown") option.text = `${model.name} · ${model.label}`;
  }
  options($("refiner"), models.filter(refining).map((m) => m.name), "None");
  options($("train-base"), checkpoints);
  if ($("sampler").options.length === 0) options($("sampler"), SAMPLERS);
  options($("vae"), vaes, "Automatic");
  library.loras = [...new Set(loras.concat(trained))].sort();
  $("embeddings").replaceChildren($("embeddings").firstElementChild, ...embeddings.map((name) => {
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    label.append(box, ` ${name}`);
    return label;
  }));
  library.controlnet = controlnets;
  library.ipadapter = adapters;
  library.preprocessors = preprocessors;
  offerExtras();
  for (const task of newest.data) noteSeed(task);  // for "Reuse last seed"
}
ON_START.push(fillChoices);

// Whether an extra fits the chosen model: made for its family, or either's family unknown
// (huabu tells a family from the files, where they say it).
function fits(kind, name) {
  const known = (family) => family && family !== "unknown";
  const model = library.families.get(`checkpoints/${$("model").value}`);
  const extra = library.families.get(`${kind}/${name}`);
  return !known(model) || !known(extra) || (EXTRAS_OF.get(model) || model) === extra;
}

// A select offers what fits the chosen model, and what it holds now.
function offer(select, kind, names, empty) {
  const current = select.value;
  options(select, names.filter((name) => name === current || fits(kind, name)), empty);
  if (names.includes(current)) select.value = current;
}

// The LoRAs, embeddings, ControlNets and IP-Adapters on offer are those that fit the chosen
// model (an SDXL LoRA is not offered for an SD 1.x model); what is already chosen stays.
function offerExtras() {
  offer($("lora-add"), "loras", library.loras, "Add LoRA");
  const boxes = [...$("embeddings").querySelectorAll("label.check")];
  for (const label of boxes) {
    const box = label.querySelector("input");
    label.hidden = !box.checked && !fits("embeddings", box.value);
  }
  $("embeddings").hidden = boxes.every((label) => label.hidden);
  for (const select of $("units").querySelectorAll(".unit-model")) {
    offer(select, "controlnet", library.controlnet);
  }
  offer($("ip-name"), "ipadapter", library.ipadapter, "None");
  fitFamily();
}
$("model").addEventListener("change", offerExtras);

// A flow model (FLUX.1 …) shows only what it takes: its samplers, its distilled guidance, the
// hires fix with the image upscalers, and none of SD's extras (ControlNet, IP-Adapter, VAE,
// embeddings, refiner, variation, tiling, clip skip). Switching between the kinds sets their
// usual steps and guidance.
let shownKind = "sd";  // "sd", or the flow family shown
const family = () => library.families.get(`checkpoints/${$("model").value}`);
const flowFamily = () => FLOW.get(family());
function fitFamily() {
  const flow = flowFamily();
  // The advanced section stays (hires fix, image format); its SD-only parts do not, nor the
  // latent upscalers where the family's hires fix upscales the decoded image only.
  const sdOnly = [$("control"), $("vae").closest("label"), ...document.querySelectorAll(".sd-only")];
  for (const element of sdOnly) {
    element.hidden = Boolean(flow);
  }
  $("advanced").hidden = Boolean(flow && flow.edits);
  const pixelsOnly = Boolean(flow && flow.pixelHires);
  for (const option of $("hires-upscaler").options) {
    option.hidden = pixelsOnly && option.value.startsWith("Latent");
  }
  if (pixelsOnly && $("hires-upscaler").value.startsWith("Latent")) {
    $("hires-upscaler").value = "Lanczos";
  }
  if (flow) $("embeddings").hidden = true;
  $("distilled-field").hidden = !(flow && flow.distilled);
  for (const element of document.querySelectorAll(".repaint")) {
    element.hidden = Boolean(flow && flow.edits);
  }
  const samplers = flow ? flow.samplers : SAMPLERS;
  const current = $("sampler").value;
  const offered = [...$("sampler").options].map((option) => option.value);
  if (offered.join() !== samplers.join()) options($("sampler"), samplers);
  $("sampler").value = samplers.includes(current) ? current : samplers[0];
  const kind = flow ? family() : "sd";
  if (kind !== shownKind) {
    $("guidance").value = flow ? flow.guidance : 7;
    $("steps").value = flow ? flow.steps : 20;
    if (flow && flow.distilled) $("distilled_guidance").value = flow.distilled;
    shownKind = kind;
  }
}

// -- sizes and seeds ---------------------------------------------------------------------------

options($("size-preset"), SIZES.map(([w, h]) => `${w} × ${h}`), "Custom");
$("size-preset").addEventListener("change", () => {
  if (!$("size-preset").value) return;
  const [w, h] = $("size-preset").value.split(" × ");
  $("width").value = w;
  $("height").value = h;
});
for (const id of ["width", "height"]) {
  $(id).addEventListener("input", () => {
    const preset = `${$("width").value} × ${$("height").value}`;
    $("size-preset").value = SIZES.some(([w, h]) => `${w} × ${h}` === preset) ? preset : "";
  });
}
$("seed-random").addEventListener("click", () => { $("seed").value = -1; });
$("seed-reuse").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });

// -- LoRAs ----------------------------------------------------------------------------------

function addLora(name, weight = 1) {
  if (!name || chosenLoras.some((lora) => lora.name === name)) return;
  const item = document.createElement("li");
  const label = document.createElement("label");
  label.className = "inline";
  const input = document.createElement("input");
  input.type = "number";
  input.step = "0.05";
  input.min = "-4";
  input.max = "4";
  input.value = weight;
  input.setAttribute("aria-label", `${t("Weight of")} ${name}`);
  label.append(name, input);
  const lora = { name, input };
  item.append(label, button(t("Remove"), () => {
    chosenLoras = chosenLoras.filter((other) => other !== lora);
    item.remove();
  }, { label: `${t("Remove")} ${name}` }));
  chosenLoras.push(lora);
  $("loras").append(item);
}

$("lora-add").addEventListener("change", () => {
  addLora($("lora-add").value);
  $("lora-add").value = "";
});

// -- the source image (image-to-image; the painter paints its mask) --------------------------

async function setSource(file) {
  clearErrors(form);
  try {
    const uploaded = await upload(file, "init_image");
    source = { id: uploaded.id, width: uploaded.width, height: uploaded.height };
    // The output takes the source's size (multiples of 8), which the model resizes it to.
    $("width").value = Math.max(64, Math.floor(uploaded.width / 8) * 8);
    $("height").value = Math.max(64, Math.floor(uploaded.height / 8) * 8);
    $("width").dispatchEvent(new Event("input"));
    await painter.load(URL.createObjectURL(file), uploaded.width, uploaded.height);
    $("painter").hidden = false;
  } catch (error) {
    showError(form, error);
  }
}

function removeSource() {
  source = null;
  $("source").value = "";
  $("painter").hidden = true;
}

$("source").addEventListener("change", () => { if ($("source").files[0]) setSource($("source").files[0]); });
$("source-remove").addEventListener("click", removeSource);
$("source-drop").addEventListener("dragover", (event) => event.preventDefault());
$("source-drop").addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files[0]) setSource(event.dataTransfer.files[0]);
});

// -- ControlNet units and the IP-Adapter ------------------------------------------------------

function controlUnit() {
  const unit = document.createElement("fieldset");
  unit.className = "unit";
  const number = $("units").children.length + 1;
  unit.innerHTML = `<legend></legend><div class="row">
    <label><span></span> <select class="unit-model"></select></label>
    <label><span></span> <select class="unit-preprocessor"></select></label>
    <label><span></span> <input class="unit-image" type="file" accept="image/png,image/jpeg,image/webp"></label>
    <label><span></span> <input class="unit-scale" type="number" min="0" max="2" step="0.05" value="1"></label>
    <label><span></span> <input class="unit-start" type="number" min="0" max="1" step="0.05" value="0"></label>
    <label><span></span> <input class="unit-end" type="number" min="0" max="1" step="0.05" value="1"></label>
    </div>`;
  unit.querySelector("legend").textContent = `${t("ControlNet unit")} ${number}`;
  const spans = unit.querySelectorAll("label > span");
  ["ControlNet model", "Preprocessor", "Control image", "Control weight", "Start", "End"]
    .forEach((text, i) => { spans[i].textContent = t(text); });
  offer(unit.querySelector(".unit-model"), "controlnet", library.controlnet);
  const pre = unit.querySelector(".unit-preprocessor");
  pre.replaceChildren(...library.preprocessors.map((p) => {
    const option = new Option(p.available ? p.name : `${p.name} (${t("needs")} ${p.needs})`, p.name);
    option.disabled = !p.available;
    return option;
  }));
  pre.value = "none";
  unit.querySelector(".unit-image").addEventListener("change", async (event) => {
    clearErrors(form);
    unit.dataset.image = "";
    try {
      unit.dataset.image = (await upload(event.target.files[0], "controlnets")).id;
    } catch (error) {
      showError(form, error);
    }
  });
  unit.append(button(t("Remove"), () => unit.remove()));
  return unit;
}

$("unit-add").addEventListener("click", () => {
  if ($("units").children.length < MAX_UNITS) $("units").append(controlUnit());
});

$("ip-image").addEventListener("change", async () => {
  clearErrors(form);
  ipImage = null;
  try {
    ipImage = (await upload($("ip-image").files[0], "ip_adapter")).id;
  } catch (error) {
    showError(form, error);
  }
});

// -- submitting ------------------------------------------------------------------------------

async function requestBody() {
  const number = (id) => Number($(id).value);
  const body = {
    model: $("model").value, prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
    sampler: $("sampler").value, steps: number("steps"), width: number("width"),
    height: number("height"), seed: number("seed"), n_images: number("n_images"),
    guidance: number("guidance"),
  };
  // A flow model's hidden controls send nothing (see fitFamily).
  const flow = Boolean(flowFamily());
  if (flow && flowFamily().distilled) body.distilled_guidance = number("distilled_guidance");
  if ($("vae").value && !flow) body.vae = $("vae").value;
  if (chosenLoras.length) body.loras = chosenLoras.map(({ name, input }) => ({ name, weight: Number(input.value) }));
  const embeddings = [...$("embeddings").querySelectorAll("input:checked")].map((box) => box.value);
  if (embeddings.length && !flow) body.embeddings = embeddings;
  const styles = [...$("styles").querySelectorAll("input:checked")].map((box) => box.value);
  if (styles.length) body.styles = styles;
  if (source) {
    body.init_image = source.id;
    // An editing model's image is the image to edit, drawn anew: no strength.
    if (!(flow && flowFamily().edits)) body.strength = number("strength");
    const mask = await painter.mask();
    if (mask) {
      body.inpaint = {
        mask: (await upload(mask, "inpaint")).id, blur: number("inpaint-blur"),
        fill: $("inpaint-fill").value, only_masked: $("inpaint-only-masked").checked,
        padding: number("inpaint-padding"),
      };
    }
  }
  const units = flow ? [] : [...$("units").children];
  if (units.length) {
    body.controlnets = units.map((unit) => ({
      model: unit.querySelector(".unit-model").value, image: unit.dataset.image || null,
      preprocessor: unit.querySelector(".unit-preprocessor").value,
      scale: Number(unit.querySelector(".unit-scale").value),
      start: Number(unit.querySelector(".unit-start").value),
      end: Number(unit.querySelector(".unit-end").value),
    }));
  }
  if ($("output_format").value !== "png") body.output_format = $("output_format").value;
  if ($("hires-on").checked && !(flow && flowFamily().edits)) {
    body.hires = { scale: number("hires-scale"), upscaler: $("hires-upscaler").value,
      steps: number("hires-steps"), strength: number("hires-strength"),
      resize_width: number("hires-width"), resize_height: number("hires-height") };
  }
  if (flow) return body;
  if ($("ip-name").value) {
    body.ip_adapter = { name: $("ip-name").value, image: ipImage, scale: number("ip-scale") };
  }
  if ($("refiner").value) {
    body.refiner = { model: $("refiner").value, switch_at: number("refiner-switch"),
      hires_pass: $("refiner-pass").value };
  }
  if (number("subseed_strength") > 0) {
    body.subseed = number("subseed");
    body.subseed_strength = number("subseed_strength");
  }
  if ($("tiling").checked) body.tiling = true;
  if (number("clip_skip") !== 1) body.clip_skip = number("clip_skip");
  return body;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form);
  try {
    const task = await api("POST", "/generations", await requestBody());
    watch(task, $("tasks"));
  } catch (error) {
    showError(form, error);
  }
});

function useSettings(task) {
  const request = task.request;
  $("model").value = request.model;
  offerExtras();  // the family's controls first: they set its usual steps and guidance
  for (const field of FORM_FIELDS) {
    const value = request[field];
    if (value !== undefined && value !== null) $(field).value = value;
  }
  $("width").dispatchEvent(new Event("input"));
  $("vae").value = request.vae || "";
  $("loras").replaceChildren();
  chosenLoras = [];
  for (const lora of request.loras || []) addLora(lora.name, lora.weight);
  for (const box of $("embeddings").querySelectorAll("input")) {
    box.checked = (request.embeddings || []).includes(box.value);
  }
  offerExtras();
  if (chosenLoras.length || request.vae || (request.embeddings || []).length) $("extras").open = true;
  const hires = request.hires;
  $("hires-on").checked = Boolean(hires);
  if (hires) {
    $("hires-scale").value = hires.scale;
    $("hires-upscaler").value = hires.upscaler;
    $("hires-steps").value = hires.steps;
    $("hires-strength").value = hires.strength;
    $("hires-width").value = hires.resize_width;
    $("hires-height").value = hires.resize_height;
  }
  $("refiner").value = request.refiner ? request.refiner.model : "";
  if (request.refiner) {
    $("refiner-switch").value = request.refiner.switch_at;
    $("refiner-pass").value = request.refiner.hires_pass;
  }
  $("tiling").checked = Boolean(request.tiling);
  if (hires || request.refiner || request.subseed_strength > 0 || request.tiling
    || request.clip_skip > 1) $("advanced").open = true;
  location.hash = "#generate";
  $("prompt").focus();
}

// A trained LoRA, ready to use: its base model, the LoRA at weight 1, its trigger word.
function useTrained(plan) {
  location.hash = "#generate";
  if (!library.loras.includes(plan.name)) library.loras.push(plan.name);
  $("model").value = plan.base_model;
  offerExtras();
  addLora(plan.name);
  $("extras").open = true;
  if (plan.trigger_word && !$("prompt").value.includes(plan.trigger_word)) {
    $("prompt").value = `${plan.trigger_word}, ${$("prompt").value}`.replace(/, $/, "");
  }
  $("prompt").focus();
}
