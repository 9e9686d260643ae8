// Runs the plan widget's front end (dsql_magic/explain/static/plan_widget.js) in Node against a
// minimal DOM and a model holding the state Python produced, then clicks like a user would.
// Usage: node plan_widget.test.mjs WIDGET_JS STATE_JSON  -> prints a JSON report; exits 1 on failure.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

class FakeText {
  constructor(text) { this.text = String(text); }
  get textContent() { return this.text; }
}

class FakeElement {
  constructor(tag) {
    this.tagName = tag; this.children = []; this.className = ""; this.style = {};
    this.attrs = {}; this.listeners = {}; this._text = null;
  }
  appendChild(child) { this.children.push(child); return child; }
  replaceChildren(...kids) { this.children = kids; this._text = null; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return this.attrs[k]; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  click() { for (const fn of this.listeners.click || []) fn({ stopPropagation() {} }); }
  set textContent(v) { this._text = String(v); this.children = []; }
  get textContent() { return this._text ?? this.children.map((c) => c.textContent).join(""); }
  get innerHTML() { throw new Error("the widget must not use innerHTML"); }
  set innerHTML(v) { throw new Error("the widget must not use innerHTML"); }
}

globalThis.document = {
  createElement: (tag) => new FakeElement(tag),
  createTextNode: (text) => new FakeText(text),
};

function all(root, pred, out = []) {
  if (root instanceof FakeElement) {
    if (pred(root)) out.push(root);
    for (const c of root.children) all(c, pred, out);
  }
  return out;
}
const byClass = (root, cls) => all(root, (e) => e.className.split(" ").includes(cls));

function makeModel(state) {
  const handlers = {};
  const model = {
    saves: 0,
    get: (k) => state[k],
    set(k, v) { state[k] = v; for (const f of handlers[`change:${k}`] || []) f(); },
    save_changes() { model.saves += 1; },
    on(e, f) { (handlers[e] ||= []).push(f); },
    off(e, f) { handlers[e] = (handlers[e] || []).filter((x) => x !== f); },
    handlerCount: () => Object.values(handlers).reduce((n, l) => n + l.length, 0),
  };
  return model;
}

const [widgetPath, statePath] = process.argv.slice(2);
const widget = (await import(pathToFileURL(widgetPath).href)).default;
const states = JSON.parse(readFileSync(statePath, "utf8"));
const report = {};

// 1. The manual's Index Scan example: tree, colours, clicks.
{
  const state = states.index_scan;
  const model = makeModel(state);
  const root = new FakeElement("div");
  const cleanup = widget.render({ model, el: root });
  const rows = () => byClass(root, "dsqlx-row");
  assert.equal(rows().length, 5);
  assert.ok(rows()[0].textContent.includes("Index Scan using idx1 on account"));
  const processor = byClass(root, "dsqlx-processor").filter((e) => e.style.color);
  assert.equal(processor[0].style.color, "#c62828");
  assert.ok(processor[0].textContent.startsWith("query-processor filter: (balance"));
  assert.equal(byClass(root, "dsqlx-storage").filter((e) => e.style.color)[0].style.color, "#b26a00");
  assert.equal(byClass(root, "dsqlx-index").filter((e) => e.style.color)[0].style.color, "#2e7d32");

  const toggleOf = (id) => byClass(rows().find((r) => r.getAttribute("data-node") === String(id)), "dsqlx-toggle")[0];
  toggleOf(1).click();
  report.after_collapse = { expanded: [...state.expanded], rows: rows().length, saves: model.saves };
  assert.deepEqual(state.expanded, [0, 3]);
  assert.equal(rows().length, 2);
  toggleOf(1).click();
  assert.deepEqual(state.expanded, [0, 1, 3]);
  assert.equal(rows().length, 5);

  const nameOf = (id) => byClass(rows().find((r) => r.getAttribute("data-node") === String(id)), "dsqlx-name")[0];
  nameOf(3).click();
  assert.equal(state.selected, 3);
  const details = byClass(root, "dsqlx-details")[0];
  assert.ok(details.textContent.startsWith("Storage Lookup on account"));
  assert.ok(details.textContent.includes("created_at > "));
  assert.ok(details.textContent.includes("INCLUDE"));
  assert.ok(byClass(root, "dsqlx-selected")[0].getAttribute("data-node") === "3");
  report.after_select = { selected: state.selected, saves: model.saves };

  const adviceItems = byClass(root, "dsqlx-link");
  assert.equal(adviceItems.length, 2);
  adviceItems[0].click();
  assert.equal(state.selected, 0);

  const before = model.handlerCount();
  cleanup();
  assert.equal(model.handlerCount(), before - 3);
}

// 2. A plan with a DPU block: the estimate is shown first, with its transaction minimums.
{
  const state = states.dpu_insert;
  const root = new FakeElement("div");
  widget.render({ model: makeModel(state), el: root });
  const header = byClass(root, "dsqlx-header")[0].textContent;
  assert.ok(header.includes("DPU estimate"));
  assert.ok(header.includes("Write 0.01875 (txn min 0.05000)"));
  assert.ok(header.includes("Total 0.03732"));
  report.header = header;
}

// 3. Text with markup stays text.
{
  const state = states.markup;
  const root = new FakeElement("div");
  widget.render({ model: makeModel(state), el: root });
  assert.ok(root.textContent.includes("<b>x</b>"));
}

report.ok = true;
console.log(JSON.stringify(report));
