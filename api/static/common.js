// Shared by the page's sections: element builders, the API call, the error box, the API key.
"use strict";

export const $ = (id) => document.getElementById(id);

/** An HTML element: props are attributes ("class", "style" object, "on*" handlers). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, same conventions as `el`. */
export function svg(tag, props = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, props);
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

function setProps(node, props) {
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

/** A number with `digits` decimals, or an em dash when there is none. */
export function fmt(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

export const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

// -- the API key: a password field, kept in this tab's sessionStorage only if asked ----------

const KEY_STORAGE = "bertheads.apiKey";
let keyInput = null;

/** Wire the key field and its "keep in this tab" box; never localStorage, never the URL. */
export function setUpKey(input, remember) {
  keyInput = input;
  let kept = null;
  try { kept = sessionStorage.getItem(KEY_STORAGE); } catch (e) { /* storage disabled */ }
  if (kept) { input.value = kept; remember.checked = true; }
  const store = () => {
    try {
      if (remember.checked && input.value.trim()) sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage disabled: the key lives in the field only */ }
  };
  input.addEventListener("input", store);
  remember.addEventListener("change", store);
}

// -- calling the API --------------------------------------------------------------------

export class ApiError extends Error {
  constructor(info) { super(info.message); this.info = info; }
}

/** Something the user can fix in the page (an empty textarea); not a bug, not logged. */
export class InputError extends Error {}

/** Call the API with JSON; the key, when filled, goes as a bearer token. Errors: ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = keyInput ? keyInput.value.trim() : "";
  if (key) headers.Authorization = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError({ message: "Network error: " + e.message, type: "network_error", param: null, code: 0 });
  }
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) {
    const err = data && data.error ? data.error : {};
    throw new ApiError({
      message: err.message || res.statusText || "Request failed",
      type: err.type || "http_error", param: err.param ?? null, code: err.code ?? res.status,
    });
  }
  return data;
}

// -- the page's one error box (sticky, so it is seen from any section) -------------------

export function showError(e) {
  const box = $("error");
  const info = e instanceof ApiError ? e.info
    : { message: (e && e.message) || String(e), type: "client_error", param: null, code: 0 };
  // A failure of the page itself (not the server's answer, not the user's input): keep its
  // stack in the console for whoever debugs it.
  if (!(e instanceof ApiError || e instanceof InputError)) console.error(e);
  const close = el("button", { type: "button", class: "close", "aria-label": "Dismiss the error",
    onclick: clearError }, "×");
  box.replaceChildren(close,
    el("strong", {}, "Error" + (info.code ? " " + info.code : "") + ": "),
    el("span", { class: "message" }, info.message),
    el("div", { class: "meta" }, el("code", {}, "type: " + info.type),
      info.param ? el("code", {}, "  ·  param: " + info.param) : ""));
  box.hidden = false;
}

export function clearError() {
  const box = $("error");
  box.hidden = true;
  box.replaceChildren();
}

/** Run `fn` with `buttons` disabled and `label` in `status`; failures go to the error box. */
export async function busy(label, fn, buttons, status) {
  clearError();
  for (const b of buttons) b.disabled = true;
  status.textContent = label;
  try { await fn(); if (status.textContent === label) status.textContent = ""; }
  catch (e) { status.textContent = ""; showError(e); }
  finally { for (const b of buttons) b.disabled = false; }
}
