// huabu's page: the native API (/huabu/v1) and nothing private. No framework, no build step.
// The scripts share one global scope and load in order: app (this: the API, words, routing,
// logging in), tasks, generate, painter, training, manage, main (which starts it).
"use strict";

const API = "/huabu/v1";
let token = localStorage.getItem("huabu.token");
// Set by the server: whether requests without credentials are served (HUABU_ANONYMOUS).
const ANONYMOUS = document.querySelector('meta[name="huabu-anonymous"]').content === "true";
const SECTIONS = ["login", "generate", "gallery", "training", "keys", "admin"];
//: What a section does when shown (each script adds its own), and once after logging in.
const ON_SHOW = {};
const ON_START = [];

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
  "Training": "训练", "Size preset": "尺寸预设", "Custom": "自定义", "Guidance": "提示词引导系数",
  "Distilled guidance": "蒸馏引导系数",
  "Random": "随机", "Reuse last seed": "沿用上次种子", "LoRAs, VAE, embeddings": "LoRA、VAE、嵌入",
  "VAE": "VAE", "Automatic": "自动", "Add LoRA": "添加 LoRA", "Weight of": "权重：",
  "Remove": "移除", "Embeddings": "嵌入", "Styles": "风格", "Image to image and inpainting": "图生图与局部重绘",
  "Source image": "原图", "Choose or drop an image here.": "选择图片，或把图片拖到这里。",
  "Strength": "重绘幅度", "Mask": "蒙版",
  "Paint where the image should change (inpainting); leave it unpainted to change all of it.":
    "在要改变的地方涂抹（局部重绘）；不涂抹则整张图都会改变。",
  "Brush size": "笔刷大小", "Erase": "擦除", "Invert mask": "反转蒙版", "Clear mask": "清除蒙版",
  "Remove image": "移除图片", "ControlNet and IP-Adapter": "ControlNet 与 IP-Adapter",
  "Add ControlNet unit": "添加 ControlNet 单元", "ControlNet unit": "ControlNet 单元",
  "ControlNet model": "ControlNet 模型", "Preprocessor": "预处理器", "Control image": "控制图",
  "Control weight": "控制权重", "IP-Adapter": "IP-Adapter", "IP-Adapter image": "IP-Adapter 图片",
  "IP-Adapter scale": "IP-Adapter 强度", "None": "无", "Preview": "预览", "Close": "关闭",
  "Not an image": "不是图片", "Uploading…": "正在上传…", "Training images": "训练图片",
  "Name": "名称", "Trigger word": "触发词", "Base model": "基础模型", "Training steps": "训练步数",
  "Resolution": "分辨率", "Start training": "开始训练", "Your trained models": "你训练的模型",
  "Generate with it": "用它生成", "Trained": "已训练", "needs": "需要",
  "Mask blur": "蒙版模糊", "Masked content": "蒙版区域内容", "original": "原图", "fill": "填充",
  "Only masked": "仅重绘蒙版区域", "Padding": "边缘预留", "Start": "开始", "End": "结束",
  "Hires fix, refiner, variation, tiling": "高清修复、精修模型、变异种子、平铺",
  "Hires fix": "高清修复", "Upscale by": "放大倍数", "Upscaler": "放大算法",
  "Hires steps": "高清修复步数", "Denoising strength": "重绘幅度", "Refiner": "精修模型",
  "Switch at": "切换时机", "Variation seed": "变异种子", "Variation strength": "变异强度",
  "Tiling": "平铺", "CLIP skip": "CLIP 跳过层", "What the images show": "图片内容",
  "Style": "画风", "Human": "人物", "Architecture": "建筑", "Plants": "植物", "Animals": "动物",
  "Rank": "秩", "Learning rate": "学习率", "Resize width to": "宽度调整为",
  "Resize height to": "高度调整为", "Refiner in hires fix": "高清修复中的精修",
  "second pass": "第二遍", "first pass": "第一遍", "both passes": "两遍", "Image format": "图片格式",
};
let language = localStorage.getItem("huabu.language") || "en";
const t = (text) => (language === "zh" && ZH[text]) || text;

function translate() {
  document.documentElement.lang = language === "zh" ? "zh-CN" : "en";
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of document.querySelectorAll("[data-i18n-label]")) {
    element.setAttribute("aria-label", t(element.dataset.i18nLabel));
  }
  $("language").value = language;
}

$("language").addEventListener("change", () => {
  language = $("language").value;
  localStorage.setItem("huabu.language", language);
  translate();
});

function failure(response, data) {
  const error = new Error((data.error && data.error.message) || `HTTP ${response.status}`);
  error.status = response.status;
  error.param = data.error ? data.error.param : null;
  return error;
}

function authorised(headers = {}) {
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function api(method, path, body) {
  const headers = authorised();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw failure(response, data);
  return data;
}

// An image file (or a Blob) uploaded for use in a request; refused here first if it is not
// an image, so that nothing is sent, let alone queued. Errors name ``field``.
async function upload(file, field) {
  if (!file.type.startsWith("image/")) {
    const error = new Error(`${t("Not an image")}: ${file.name || file.type || "?"}`);
    error.param = field;
    throw error;
  }
  const form = new FormData();
  form.append("file", file, file.name || "image.png");
  const response = await fetch(`${API}/uploads`, { method: "POST", headers: authorised(), body: form });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = failure(response, data);
    error.param = field;
    throw error;
  }
  return data;
}

// Refusals next to the field they name (``param``'s first part), in ``form``.
function clearErrors(form) {
  for (const element of form.querySelectorAll(".error")) element.textContent = "";
}

function showError(form, error) {
  const field = (error.param || "").split(".")[0];
  const target = form.querySelector(`.error[data-for="${field}"]`)
    || form.querySelector('.error[data-for=""]');
  target.textContent = error.message;
}

function button(text, onClick, { label } = {}) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "quiet";
  element.textContent = text;
  if (label) element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

function show(section) {
  for (const id of SECTIONS) $(id).hidden = id !== section;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#${section}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (ON_SHOW[section]) ON_SHOW[section]();
}

async function start() {
  if (!token && !ANONYMOUS) { loggedOut(); return; }
  try {
    const me = await api("GET", "/me");
    $("who").textContent = me.email;
    $("nav-admin").hidden = !me.is_admin;
    $("nav").hidden = false;
    $("logout").hidden = !token;
    await Promise.all(ON_START.map((step) => step()));
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
  const allowed = ["generate", "gallery", "training", "keys"]
    .concat($("nav-admin").hidden ? [] : ["admin"]);
  show(allowed.includes(section) ? section : "generate");
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
