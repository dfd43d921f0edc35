// Training: upload images as a dataset, train a LoRA on it (a task, watched like the others),
// then generate with it ("Generate with it" on the finished card, or from the list).
"use strict";

const trainingForm = $("training-form");

async function loadTrained() {
  const names = await api("GET", "/trained-models");
  $("trained").replaceChildren(...names.map((name) => {
    const item = document.createElement("li");
    item.append(name, " ", button(t("Generate with it"), () => {
      location.hash = "#generate";
      addLora(name);
      $("extras").open = true;
    }, { label: `${t("Generate with it")}: ${name}` }));
    return item;
  }));
}
ON_SHOW.training = loadTrained;

trainingForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(trainingForm);
  const files = [...$("train-images").files];
  const submit = trainingForm.querySelector('button[type="submit"]');
  submit.disabled = true;
  try {
    if (!files.length) {
      const error = new Error(t("Choose or drop an image here."));
      error.param = "images";
      throw error;
    }
    const name = $("train-name").value;
    // Every file is checked (and uploaded) before anything is made or queued.
    const uploads = [];
    for (const file of files) uploads.push((await upload(file, "images")).id);
    const dataset = await api("POST", "/datasets", { name: name || "dataset", images: uploads });
    const body = {
      name, datasets: [dataset.id], trigger_word: $("train-trigger").value,
      base_model: $("train-base").value || null, steps: Number($("train-steps").value),
    };
    body.main_body = $("train-body").value;
    for (const [id, field] of [["train-resolution", "resolution"], ["train-rank", "rank"],
      ["train-lr", "learning_rate"]]) {
      if ($(id).value) body[field] = Number($(id).value);
    }
    const task = await api("POST", "/trainings", body).catch(async (error) => {
      await api("DELETE", `/datasets/${dataset.id}`).catch(() => null);  // nothing left behind
      throw error;
    });
    watch(task, $("trainings")).then(loadTrained);
  } catch (error) {
    showError(trainingForm, error);
  } finally {
    submit.disabled = false;
  }
});
