// Task cards: queue position and ETA, the step counter and live preview, the images (opened
// large in the viewer), cancel; fed by each task's server-sent events. And the gallery.
"use strict";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
let galleryCursor = null;
// The seed of the newest image seen (for "Reuse last seed"), and when its task was made.
let lastSeed = null;
let lastSeedAt = "";

function taskCard(task, { gallery = false } = {}) {
  const card = document.createElement("article");
  card.className = "task";
  card.id = `task-${task.id}`;
  card.innerHTML = `<div class="status"><span class="state" role="status"></span>
    <progress max="1" value="0"></progress>
    <button type="button" class="quiet cancel"></button></div>
    <p class="prompt"></p><img class="live" hidden><div class="images"></div>
    <div class="tools"></div>`;
  card.querySelector(".prompt").textContent = task.kind === "train"
    ? `${t("Training")}: ${task.request.name}` : (task.request.prompt || "");
  card.querySelector("progress").setAttribute("aria-label", t("Progress"));
  card.querySelector(".live").alt = t("Preview");
  card.querySelector(".cancel").textContent = t("Cancel");
  card.querySelector(".cancel").addEventListener("click", async () => {
    await api("POST", `/tasks/${task.id}/cancel`).catch((error) => {
      card.querySelector(".state").textContent = error.message;
    });
  });
  if (gallery && task.kind === "generate") {
    card.querySelector(".tools").append(
      button(t("Use these settings"), () => useSettings(task)),
      button(t("Delete"), async () => {
        await api("DELETE", `/tasks/${task.id}`);
        card.remove();
      }),
    );
  }
  return card;
}

function stateText(task) {
  if (task.state === "queued") {
    const eta = task.eta_seconds == null ? "" : `, ${t("about")} ${Math.ceil(task.eta_seconds)} s`;
    return `${t("Queued")}: ${task.queue_position} ${t("ahead")}${eta}`;
  }
  if (task.state === "running") return `${t("Step")} ${task.progress.step} / ${task.progress.total}`;
  if (task.state === "succeeded") return t("Done");
  if (task.state === "cancelled") return t("Cancelled");
  return `${t("Failed")}: ${task.error || "unknown error"}`;
}

function noteSeed(task) {
  if (task.state === "succeeded" && task.images.length && task.created_at >= lastSeedAt) {
    lastSeed = task.images[0].seed;
    lastSeedAt = task.created_at;
    $("seed-reuse").disabled = false;
  }
}

function render(card, task) {
  const bar = card.querySelector("progress");
  card.querySelector(".state").textContent = stateText(task);
  bar.value = task.state === "succeeded" ? 1 : task.progress.percent / 100;
  card.querySelector(".cancel").hidden = FINISHED.has(task.state);
  bar.hidden = FINISHED.has(task.state);
  // The live preview (1/8 of the size), shown at the image's own size while it runs.
  const live = card.querySelector(".live");
  live.hidden = !(task.state === "running" && task.preview);
  if (!live.hidden) {
    live.src = task.preview;
    live.style.width = `${Math.min(task.request.width || 256, 256)}px`;
  }
  if (task.state !== "succeeded") return;
  if (task.kind === "train") {
    const tools = card.querySelector(".tools");
    if (!tools.children.length) tools.append(button(t("Generate with it"), () => useTrained(task.request)));
    return;
  }
  noteSeed(task);
  card.querySelector(".images").replaceChildren(...task.images.map((image) => {
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = image.url;
    link.addEventListener("click", (event) => { event.preventDefault(); view(task, image); });
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = `${t("Image")} ${image.index + 1}, ${t("seed")} ${image.seed}`;
    link.append(img);
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = t("Parameters");
    const text = document.createElement("pre");
    text.textContent = image.infotext;
    const download = document.createElement("a");
    download.href = image.url;
    download.download = `${task.id}-${image.index}.${image.format}`;
    download.textContent = t("Download");
    details.append(summary, text, download);
    figure.append(link, details);
    return figure;
  }));
}

// One image, large, with its parameters and a download link.
function view(task, image) {
  $("viewer-title").textContent = `${t("Image")} ${image.index + 1}, ${t("seed")} ${image.seed}`;
  $("viewer-image").src = image.url;
  $("viewer-image").alt = $("viewer-title").textContent;
  $("viewer-info").textContent = image.infotext;
  $("viewer-download").href = image.url;
  $("viewer-download").download = `${task.id}-${image.index}.${image.format}`;
  $("viewer").showModal();
}

$("viewer-close").addEventListener("click", () => $("viewer").close());
$("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) $("viewer").close(); });

// A card for ``task`` in ``list``, kept current by the task's events (read with fetch, so that
// the token goes in a header) until it ends; a lost connection says so and reconnects.
async function watch(task, list) {
  const card = taskCard(task);
  list.prepend(card);
  render(card, task);
  while (!FINISHED.has(task.state)) {
    try {
      const response = await fetch(`${API}/tasks/${task.id}/events`, { headers: authorised() });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = chunk.split("\n").filter((l) => l.startsWith("data: "))
            .map((l) => l.slice(6)).join("\n");
          if (data) { task = JSON.parse(data); render(card, task); }
        }
      }
      if (!FINISHED.has(task.state)) throw new Error("the stream ended early");
    } catch (error) {
      card.querySelector(".state").textContent = t("Reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  return task;
}

// Loads can overlap (the section shown again while a load is out, as a slow start does):
// only the newest one's answer is shown, so that no task is listed twice.
let galleryLoad = 0;
async function loadGallery(fresh) {
  const load = ++galleryLoad;
  const query = !fresh && galleryCursor ? `&cursor=${encodeURIComponent(galleryCursor)}` : "";
  const page = await api("GET", `/tasks?limit=20${query}`);
  if (load !== galleryLoad) return;
  if (fresh) $("gallery-items").replaceChildren();
  for (const task of page.data) {
    const card = taskCard(task, { gallery: true });
    render(card, task);
    $("gallery-items").append(card);
  }
  galleryCursor = page.next_cursor;
  $("gallery-more").hidden = !galleryCursor;
}

$("gallery-more").addEventListener("click", () => loadGallery(false));
ON_SHOW.gallery = () => loadGallery(true);
