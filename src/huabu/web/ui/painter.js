// The inpainting mask, painted over the source image: a canvas at the source's own size whose
// painted pixels are the mask (shown half-transparent); brush size, erase, invert, clear.
// Exported as a black-and-white PNG: white is repainted, black kept (the native `inpaint.mask`).
"use strict";

const painter = (() => {
  const canvas = $("mask");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const INK = [255, 64, 96];
  let last = null;

  function load(url, width, height) {
    canvas.width = width;
    canvas.height = height;
    clear();
    $("source-view").src = url;
    return $("source-view").decode().catch(() => null);
  }

  function clear() {
    context.clearRect(0, 0, canvas.width, canvas.height);
  }

  // A pointer position in the canvas's own pixels (it is shown scaled).
  function point(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width),
      (event.clientY - box.top) * (canvas.height / box.height)];
  }

  function stroke(to) {
    const scale = canvas.width / canvas.getBoundingClientRect().width;
    context.globalCompositeOperation = $("erase").checked ? "destination-out" : "source-over";
    context.strokeStyle = `rgb(${INK.join(",")})`;
    context.lineWidth = Number($("brush").value) * scale;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...(last || to));
    context.lineTo(...to);
    context.stroke();
    last = to;
  }

  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = null;
    stroke(point(event));
  });
  canvas.addEventListener("pointermove", (event) => { if (last) stroke(point(event)); });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { last = null; });
  }

  function pixels() {
    return context.getImageData(0, 0, canvas.width, canvas.height);
  }

  $("mask-clear").addEventListener("click", clear);
  $("mask-invert").addEventListener("click", () => {
    const image = pixels();
    const data = image.data;
    for (let i = 0; i < data.length; i += 4) {
      const painted = data[i + 3] > 127;
      [data[i], data[i + 1], data[i + 2]] = INK;
      data[i + 3] = painted ? 0 : 255;
    }
    context.putImageData(image, 0, 0);
  });

  // The mask as a PNG Blob, or null when nothing is painted (plain image-to-image).
  async function mask() {
    const painted = pixels();
    const out = document.createElement("canvas");
    out.width = canvas.width;
    out.height = canvas.height;
    const target = out.getContext("2d");
    const image = target.createImageData(out.width, out.height);
    let any = false;
    for (let i = 0; i < painted.data.length; i += 4) {
      const white = painted.data[i + 3] > 127;
      any = any || white;
      image.data.fill(white ? 255 : 0, i, i + 3);
      image.data[i + 3] = 255;
    }
    if (!any) return null;
    target.putImageData(image, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  return { load, mask };
})();
