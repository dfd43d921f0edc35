// API keys (create, shown once; list; revoke) and, for admins, users, workers and queues.
"use strict";

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
      cell.append(button(t("Revoke"), async () => {
        await api("DELETE", `/me/keys/${encodeURIComponent(key.prefix)}`);
        await loadKeys();
      }, { label: `${t("Revoke")} ${key.prefix}` }));
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

ON_SHOW.keys = loadKeys;

async function loadAdmin() {
  const [users, fleet] = await Promise.all([api("GET", "/admin/users?limit=500"),
    api("GET", "/admin/fleet")]);
  $("admin-users").tBodies[0].replaceChildren(...users.data.map((user) => {
    const row = document.createElement("tr");
    const state = user.disabled ? t("disabled") : user.is_admin ? t("admin") : t("active");
    cells(row, [user.email, state, user.priority, user.images_per_day ?? "—"]);
    const cell = document.createElement("td");
    const action = user.disabled ? t("Enable") : t("Disable");
    cell.append(button(action, async () => {
      await api("PATCH", `/admin/users/${user.id}`, { disabled: !user.disabled });
      await loadAdmin();
    }, { label: `${action} ${user.email}` }));
    row.append(cell);
    return row;
  }));
  $("admin-workers").tBodies[0].replaceChildren(...fleet.workers.map((worker) => {
    const row = document.createElement("tr");
    // A loaded model with how it fits the device (quantized, offloaded) where it does not whole.
    const plan = (name) => {
      const how = (worker.memory_plans || {})[name];
      return how && how !== "none" ? `${name} (${how})` : name;
    };
    cells(row, [worker.name, worker.state, worker.device, worker.loaded.map(plan).join(", ") || "—"]);
    return row;
  }));
  $("admin-queues").tBodies[0].replaceChildren(...fleet.queues.map((queue) => {
    const row = document.createElement("tr");
    cells(row, [queue.kind, queue.model, queue.queued, queue.running]);
    return row;
  }));
}

ON_SHOW.admin = loadAdmin;
