// dsql-magic: the front end of the EXPLAIN plan widget (anywidget ESM module).
//
// State lives in the model's synced traits (nodes, expanded, selected, dpu, advice, ...), set by
// dsql_magic/explain/widget.py. This view only renders that state and writes the user's actions
// back with model.set + save_changes, so every view of the model (and Python) agrees. Text is
// always inserted with textContent: plan text never becomes markup.

const LEVELS = {
  index: "index condition",
  storage: "storage filter",
  processor: "query-processor filter",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function toggle(model, id) {
  const open = new Set(model.get("expanded"));
  if (open.has(id)) open.delete(id);
  else open.add(id);
  model.set("expanded", Array.from(open).sort((a, b) => a - b));
  model.save_changes();
}

export function select(model, id) {
  model.set("selected", id);
  model.save_changes();
}

/** Ids of the rows on screen, pre-order: a node shows when all its ancestors are expanded. */
export function visibleIds(nodes, expanded) {
  const open = new Set(expanded);
  const out = [];
  if (!nodes.length) return out;
  const stack = [nodes[0].id];
  while (stack.length) {
    const id = stack.pop();
    out.push(id);
    const node = nodes[id];
    if (node.children.length && open.has(id)) {
      for (let i = node.children.length - 1; i >= 0; i--) stack.push(node.children[i]);
    }
  }
  return out;
}

function renderHeader(model, box) {
  box.replaceChildren();
  const title = model.get("title");
  if (title) box.appendChild(el("div", "dsqlx-title", title));
  const note = model.get("note");
  if (note) box.appendChild(el("div", "dsqlx-note", note));
  const dpu = model.get("dpu");
  if (dpu && Object.keys(dpu).length) {
    const line = el("div", "dsqlx-dpu");
    line.appendChild(el("b", null, "DPU estimate"));
    const minimums = model.get("dpu_minimums") || {};
    for (const key of ["compute", "read", "write", "total"]) {
      const value = dpu[key];
      const cell = el("span", key === "total" ? "dsqlx-dpu-cell dsqlx-total" : "dsqlx-dpu-cell");
      let text = `${key[0].toUpperCase()}${key.slice(1)} ${value === null || value === undefined ? "?" : Number(value).toFixed(5)}`;
      if (minimums[key] !== undefined) text += ` (txn min ${Number(minimums[key]).toFixed(5)})`;
      cell.textContent = text;
      line.appendChild(cell);
    }
    box.appendChild(line);
    box.appendChild(el("div", "dsqlx-muted", model.get("dpu_note")));
  }
  const summary = model.get("summary");
  if (summary) box.appendChild(el("div", "dsqlx-muted", summary));
}

function renderRow(model, node, selected, open) {
  const row = el("div", node.id === selected ? "dsqlx-row dsqlx-selected" : "dsqlx-row");
  row.style.paddingLeft = `${node.depth * 16}px`;
  row.setAttribute("data-node", String(node.id));
  if (node.children.length) {
    const handle = el("span", "dsqlx-toggle", open ? "▾" : "▸");
    handle.setAttribute("role", "button");
    handle.setAttribute("title", open ? "hide the children" : "show the children");
    handle.addEventListener("click", (event) => {
      if (event && event.stopPropagation) event.stopPropagation();
      toggle(model, node.id);
    });
    row.appendChild(handle);
  } else {
    row.appendChild(el("span", "dsqlx-toggle dsqlx-leaf", "·"));
  }
  const name = el("span", "dsqlx-name");
  if (node.relationship) name.appendChild(el("span", "dsqlx-muted", `[${node.relationship}] `));
  name.appendChild(el("b", null, node.node_type));
  name.appendChild(document.createTextNode(node.title.slice(node.node_type.length)));
  name.addEventListener("click", () => select(model, node.id));
  row.appendChild(name);
  if (node.figures) {
    row.appendChild(el("span", node.misestimated ? "dsqlx-fig dsqlx-mis" : "dsqlx-fig",
      node.misestimated ? `${node.figures} ⚠` : node.figures));
  }
  if (node.time_share !== null && node.time_share !== undefined) {
    const bar = el("span", "dsqlx-bar");
    bar.setAttribute("title", "share of execution time spent in this node");
    const fill = el("span", "dsqlx-fill");
    fill.style.width = `${Math.round(Math.max(0, Math.min(1, node.time_share)) * 100)}%`;
    bar.appendChild(fill);
    row.appendChild(bar);
    row.appendChild(el("span", "dsqlx-muted", `${Math.round(node.time_share * 100)}%`));
  }
  return row;
}

function renderBody(node) {
  const body = el("div", "dsqlx-body");
  body.style.paddingLeft = `${node.depth * 16 + 22}px`;
  if (node.projections.length) body.appendChild(el("div", null, `projections: ${node.projections.join(", ")}`));
  for (const cond of node.conditions) {
    const line = el("div", `dsqlx-cond dsqlx-${cond.kind}`, `${LEVELS[cond.kind] || cond.kind}: ${cond.text}`);
    line.style.color = cond.colour;
    body.appendChild(line);
  }
  return body;
}

function renderTree(model, box) {
  const nodes = model.get("nodes");
  const expanded = model.get("expanded");
  const open = new Set(expanded);
  const selected = model.get("selected");
  box.replaceChildren();
  for (const id of visibleIds(nodes, expanded)) {
    const node = nodes[id];
    box.appendChild(renderRow(model, node, selected, open.has(id)));
    if (node.projections.length || node.conditions.length) box.appendChild(renderBody(node));
  }
}

function renderDetails(model, box) {
  box.replaceChildren();
  const node = model.get("nodes")[model.get("selected")];
  if (!node) return;
  box.appendChild(el("div", "dsqlx-title", node.title));
  const table = el("table", "dsqlx-props");
  for (const [key, value] of node.details) {
    const tr = el("tr");
    tr.appendChild(el("td", "dsqlx-muted", key));
    tr.appendChild(el("td", null, value));
    table.appendChild(tr);
  }
  box.appendChild(table);
  const notes = model.get("advice").filter((a) => a.node === node.id);
  if (notes.length) {
    const list = el("ul", "dsqlx-advice");
    for (const a of notes) {
      const item = el("li");
      item.appendChild(el("b", null, a.title));
      item.appendChild(document.createTextNode(`: ${a.detail}`));
      list.appendChild(item);
    }
    box.appendChild(list);
  }
}

function renderAdvice(model, box) {
  box.replaceChildren();
  const advice = model.get("advice");
  if (!advice.length) return;
  box.appendChild(el("b", null, "Advice"));
  const list = el("ul", "dsqlx-advice");
  for (const a of advice) {
    const item = el("li", "dsqlx-link", `${a.title} (node ${a.node})`);
    item.setAttribute("title", a.detail);
    item.addEventListener("click", () => select(model, a.node));
    list.appendChild(item);
  }
  box.appendChild(list);
}

function renderLegend(box) {
  box.replaceChildren();
  box.appendChild(document.createTextNode("filter levels, cheapest first: "));
  for (const kind of ["index", "storage", "processor"]) {
    box.appendChild(el("span", `dsqlx-cond dsqlx-${kind}`, LEVELS[kind]));
    box.appendChild(document.createTextNode(" "));
  }
}

function render({ model, el: root }) {
  const widget = el("div", "dsqlx-plan");
  const header = el("div", "dsqlx-header");
  const main = el("div", "dsqlx-main");
  const tree = el("div", "dsqlx-tree");
  const details = el("div", "dsqlx-details");
  const advice = el("div", "dsqlx-advice-box");
  const legend = el("div", "dsqlx-legend dsqlx-muted");
  main.appendChild(tree);
  main.appendChild(details);
  widget.appendChild(header);
  widget.appendChild(main);
  widget.appendChild(advice);
  widget.appendChild(legend);
  root.appendChild(widget);

  const all = () => {
    renderHeader(model, header);
    renderTree(model, tree);
    renderDetails(model, details);
    renderAdvice(model, advice);
    renderLegend(legend);
  };
  const treeAndDetails = () => {
    renderTree(model, tree);
    renderDetails(model, details);
  };
  all();
  model.on("change:expanded", treeAndDetails);
  model.on("change:selected", treeAndDetails);
  model.on("change:nodes", all);
  return () => {
    model.off("change:expanded", treeAndDetails);
    model.off("change:selected", treeAndDetails);
    model.off("change:nodes", all);
  };
}

export default { render };
