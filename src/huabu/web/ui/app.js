// huabu's page: the native API (/huabu/v1) and nothing private. No framework, no build step.
"use strict";

const API = "/huabu/v1";
const SAMPLERS = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M",
  "DPM++ SDE", "DPM fast", "DPM adaptive", "LMS Karras", "DPM2 Karras", "DPM2 a Karras",
  "DPM++ 2S a Karras", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "UniPC"];
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
let token = localStorage.getItem("huabu.token");
// Set by the server: whether requests without credentials are served (HUABU_ANONYMOUS).
const ANONYMOUS = document.querySelector('meta[name="huabu-anonymous"]').content === "true";
let galleryCursor = null;

const $ = (id) => document.getElementById(id);

// English is written in the page; Simplified Chinese here. The choice is remembered.
const ZH = {
  "Generate": "生成", "Gallery": "作品", "API keys": "API 密钥", "Language": "语言",
  "Log in": "登录", "Log out": "退出", "Email": "邮箱", "Password": "密码", "Prompt": "提示词",
  "Negative prompt": "反向提示词", "Model": "模型", "Sampler": "采样器", "Width": "宽度",
  "Height": "高度", "Steps": "步数", "Seed": "种子", "Images": "张数", "More": "更多",
  "Create key": "创建密钥", "Copy this key now: it is shown only once.": "请立即复制此密钥：它只显示这一次。",
  "Copy": "复制", "Copied": "已复制", "Key": "密钥", "Created": "创建于", "Last used": "最近使用",
  "Revoke": "吊销", "Revoked": "已吊销", "Never": "从未", "Cancel": "取消", "Done": "完成",
  "Cancelled": "已取消", "Failed": "失败", "Queued": "排队中", "ahead": "个在前", "about": "约",
  "Step": "步骤", "Reconnecting…": "正在重新连接…", "Progress": "进度", "Image": "图片", "seed": "种子",
  "Admin": "管理", "Users": "用户", "State": "状态", "Priority": "优先级",
  "Images per day": "每日张数", "Workers": "工作节点", "Worker": "节点", "Device": "设备",
  "Loaded": "已加载", "Queues": "队列", "Kind": "类型", "Running": "运行中",
  "Disable": "停用", "Enable": "启用", "disabled": "已停用", "active": "正常", "admin": "管理员",
  "Use these settings": "使用这些设置", "Delete": "删除", "Download": "下载", "Parameters": "参数",
};
let language = localStorage.getItem("huabu.language") || "en";
const t = (text) => (language === "zh" && ZH[text]) || text;

function translate() {
  document.documentElement.lang = language === "zh" ? "zh-CN" : "en";
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  $("language").value = language;
}

$("language").addEventListener("change", () => {
  language = $("language").value;
  localStorage.setItem("huabu.language", language);
  translate();
});

async function api(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    error.param = data.error ? data.error.param : null;
    throw error;
  }
  return data;
}

function show(section) {
  for (const id of ["login", "generate", "gallery", "keys", "admin"]) $(id).hidden = id !== section;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#${section}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (section === "gallery") loadGallery(true);
  if (section === "keys") loadKeys();
  if (section === "admin") loadAdmin();
}

async function start() {
  if (!token && !ANONYMOUS) { loggedOut(); return; }
  try {
    const me = await api("GET", "/me");
    $("who").textContent = me.email;
    $("nav-admin").hidden = !me.is_admin;
    $("nav").hidden = false;
    $("logout").hidden = !token;
    await fillChoices();
    route();
  } catch (error) {
    if (error.status !== 401) throw error;
    loggedOut();
  }
}

function loggedOut() {
  token = null;
  localStorage.removeItem("huabu.token");
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  show("login");
}

function route() {
  const section = (location.hash || "#generate").slice(1);
  const allowed = ["generate", "gallery", "keys"].concat($("nav-admin").hidden ? [] : ["admin"]);
  show(allowed.includes(section) ? section : "generate");
}

async function fillChoices() {
  const models = await api("GET", "/models?kind=checkpoints");
  $("model").replaceChildren(...models.data.map((m) => new Option(m.name, m.name)));
  if ($("sampler").options.length === 0) {
    $("sampler").replaceChildren(...SAMPLERS.map((s) => new Option(s, s)));
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const session = await api("POST", "/sessions", {
      email: $("email").value, password: $("password").value,
    });
    token = session.token;
    localStorage.setItem("huabu.token", token);
    $("password").value = "";
    await start();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", async () => {
  await api("DELETE", "/sessions/current").catch(() => null);
  token = null;
  localStorage.removeItem("huabu.token");
  await start();
});

window.addEventListener("hashchange", () => { if (token || !$("nav").hidden) route(); });

function clearErrors() {
  for (const element of document.querySelectorAll("#generate-form .error")) element.textContent = "";
}

function showError(error) {
  const field = (error.param || "").split(".")[0];
  const target = document.querySelector(`#generate-form .error[data-for="${field}"]`) || $("form-error");
  target.textContent = error.message;
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const number = (id) => Number($(id).value);
  const body = {
    model: $("model").value, prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
    sampler: $("sampler").value, steps: number("steps"), width: number("width"),
    height: number("height"), seed: number("seed"), n_images: number("n_images"),
  };
  try {
    const task = await api("POST", "/generations", body);
    watch(task);
  } catch (error) {
    showError(error);
  }
});

const FORM_FIELDS = ["prompt", "negative_prompt", "model", "sampler", "steps", "width", "height",
  "seed", "n_images"];

function useSettings(task) {
  for (const field of FORM_FIELDS) {
    const value = task.request[field];
    if (value !== undefined && value !== null) $(field).value = value;
  }
  location.hash = "#generate";
  $("prompt").focus();
}

function taskCard(task, { gallery = false } = {}) {
  const card = document.createElement("article");
  card.className = "task";
  card.id = `task-${task.id}`;
  card.innerHTML = `<div class="status"><span class="state" role="status"></span>
    <progress max="1" value="0"></progress>
    <button type="button" class="quiet cancel"></button></div>
    <p class="prompt"></p><div class="images"></div>`;
  card.querySelector(".prompt").textContent = task.request.prompt || "";
  card.querySelector("progress").setAttribute("aria-label", t("Progress"));
  card.querySelector(".cancel").textContent = t("Cancel");
  if (gallery) {
    const tools = document.createElement("div");
    tools.className = "tools";
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "quiet";
    reuse.textContent = t("Use these settings");
    reuse.addEventListener("click", () => useSettings(task));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet";
    remove.textContent = t("Delete");
    remove.addEventListener("click", async () => {
      await api("DELETE", `/tasks/${task.id}`);
      card.remove();
    });
    tools.append(reuse, remove);
    card.append(tools);
  }
  card.querySelector(".cancel").addEventListener("click", async () => {
    await api("POST", `/tasks/${task.id}/cancel`).catch((error) => {
      card.querySelector(".state").textContent = error.message;
    });
  });
  return card;
}

function render(card, task) {
  const state = card.querySelector(".state");
  const bar = card.querySelector("progress");
  const cancel = card.querySelector(".cancel");
  if (task.state === "queued") {
    const eta = task.eta_seconds == null ? "" : `, ${t("about")} ${Math.ceil(task.eta_seconds)} s`;
    state.textContent = `${t("Queued")}: ${task.queue_position} ${t("ahead")}${eta}`;
  } else if (task.state === "running") {
    state.textContent = `${t("Step")} ${task.progress.step} / ${task.progress.total}`;
    bar.value = task.progress.percent / 100;
  } else if (task.state === "succeeded") {
    state.textContent = t("Done");
    bar.value = 1;
  } else if (task.state === "cancelled") {
    state.textContent = t("Cancelled");
  } else {
    state.textContent = `${t("Failed")}: ${task.error || "unknown error"}`;
  }
  cancel.hidden = FINISHED.has(task.state);
  bar.hidden = FINISHED.has(task.state);
  if (task.state === "succeeded") {
    const images = card.querySelector(".images");
    images.replaceChildren(...task.images.map((image) => {
      const figure = document.createElement("figure");
      const link = document.createElement("a");
      link.href = image.url;
      link.target = "_blank";
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
}

async function watch(task) {
  const card = taskCard(task);
  $("tasks").prepend(card);
  render(card, task);
  // The task's events (server-sent), read with fetch so that the token goes in a header;
  // reconnects after a lost connection until the task ends.
  while (!FINISHED.has(task.state)) {
    try {
      const response = await fetch(`${API}/tasks/${task.id}/events`,
        { headers: token ? { Authorization: `Bearer ${token}` } : {} });
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
    } catch (error) {
      card.querySelector(".state").textContent = t("Reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function loadGallery(fresh) {
  if (fresh) { galleryCursor = null; $("gallery-items").replaceChildren(); }
  const query = galleryCursor ? `&cursor=${encodeURIComponent(galleryCursor)}` : "";
  const page = await api("GET", `/tasks?limit=20${query}`);
  for (const task of page.data) {
    const card = taskCard(task, { gallery: true });
    render(card, task);
    $("gallery-items").append(card);
  }
  galleryCursor = page.next_cursor;
  $("gallery-more").hidden = !galleryCursor;
}

$("gallery-more").addEventListener("click", () => loadGallery(false));

async function loadKeys() {
  const keys = await api("GET", "/me/keys");
  const rows = keys.map((key) => {
    const row = document.createElement("tr");
    const when = (stamp) => (stamp ? new Date(stamp).toLocaleString() : t("Never"));
    for (const text of [key.prefix, when(key.created_at), when(key.last_used_at)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const cell = document.createElement("td");
    if (key.revoked) {
      cell.textContent = t("Revoked");
    } else {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "quiet";
      button.textContent = t("Revoke");
      button.setAttribute("aria-label", `${t("Revoke")} ${key.prefix}`);
      button.addEventListener("click", async () => {
        await api("DELETE", `/me/keys/${encodeURIComponent(key.prefix)}`);
        await loadKeys();
      });
      cell.append(button);
    }
    row.append(cell);
    return row;
  });
  document.querySelector("#key-table tbody").replaceChildren(...rows);
}

$("key-create").addEventListener("click", async () => {
  const created = await api("POST", "/me/keys");
  $("key-value").textContent = created.key;
  $("key-new").hidden = false;
  await loadKeys();
});

$("key-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("key-value").textContent);
    $("key-copy").textContent = t("Copied");
  } catch (error) {  // no clipboard (an insecure origin): select it for a manual copy
    getSelection().selectAllChildren($("key-value"));
  }
});

function cells(row, values) {
  for (const value of values) {
    const cell = document.createElement("td");
    cell.textContent = value;
    row.append(cell);
  }
}

async function loadAdmin() {
  const [users, fleet] = await Promise.all([api("GET", "/admin/users?limit=500"),
    api("GET", "/admin/fleet")]);
  $("admin-users").tBodies[0].replaceChildren(...users.data.map((user) => {
    const row = document.createElement("tr");
    const state = user.disabled ? t("disabled") : user.is_admin ? t("admin") : t("active");
    cells(row, [user.email, state, user.priority, user.images_per_day ?? "—"]);
    const cell = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "quiet";
    button.textContent = user.disabled ? t("Enable") : t("Disable");
    button.setAttribute("aria-label", `${button.textContent} ${user.email}`);
    button.addEventListener("click", async () => {
      await api("PATCH", `/admin/users/${user.id}`, { disabled: !user.disabled });
      await loadAdmin();
    });
    cell.append(button);
    row.append(cell);
    return row;
  }));
  $("admin-workers").tBodies[0].replaceChildren(...fleet.workers.map((worker) => {
    const row = document.createElement("tr");
    cells(row, [worker.name, worker.state, worker.device, worker.loaded.join(", ") || "—"]);
    return row;
  }));
  $("admin-queues").tBodies[0].replaceChildren(...fleet.queues.map((queue) => {
    const row = document.createElement("tr");
    cells(row, [queue.kind, queue.model, queue.queued, queue.running]);
    return row;
  }));
}

translate();
start();
