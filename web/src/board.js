// The caption lines on screen: one line per segment_id, replaced in place by higher
// revisions, closed by the final, faded out after a while (PROTOCOL.md, "Replace in place").
const FINISHED_MEMORY = 1000;

export class CaptionBoard {
  constructor(root, { lines = 3, fadeSeconds = 8 } = {}) {
    this.root = root;
    this.maxLines = lines;
    this.fadeMs = fadeSeconds * 1000;
    this.shown = new Map(); // segment_id -> {rev, el, final}
    this.finished = new Set(); // segment ids whose final has been handled
  }

  handle(frame) {
    if (frame.type !== "partial" && frame.type !== "final") return;
    if (this.finished.has(frame.segment_id)) return;
    const line = this.shown.get(frame.segment_id);
    if (line && line.rev >= frame.rev) return; // an older revision or a duplicate
    if (frame.type === "final") this.finish(frame.segment_id);
    if (frame.type === "final" && !frame.text.trim()) {
      if (line) this.remove(frame.segment_id);
      return;
    }
    const entry = line ?? this.create(frame);
    entry.rev = frame.rev;
    this.fill(entry.el, frame);
    if (frame.type === "final") {
      entry.final = true;
      entry.el.classList.add("final");
      entry.timer = setTimeout(() => this.fade(frame.segment_id), this.fadeMs);
    }
  }

  finish(segmentId) {
    this.finished.add(segmentId);
    if (this.finished.size > FINISHED_MEMORY) {
      this.finished.delete(this.finished.values().next().value);
    }
  }

  create(frame) {
    const el = document.createElement("div");
    el.className = "line";
    el.dataset.segment = frame.segment_id;
    el.dataset.participant = frame.participant;
    const who = document.createElement("span");
    who.className = "who";
    const text = document.createElement("span");
    text.className = "text";
    el.append(who, text);
    this.root.append(el);
    const entry = { rev: -1, el, final: false, timer: null };
    this.shown.set(frame.segment_id, entry);
    this.trim();
    return entry;
  }

  fill(el, frame) {
    el.querySelector(".who").textContent = frame.name || frame.participant;
    const text = el.querySelector(".text");
    const stable = frame.type === "final" ? frame.text.length : frame.stable_chars || 0;
    const settled = document.createElement("span");
    settled.className = "stable";
    settled.textContent = frame.text.slice(0, stable);
    const tentative = document.createElement("span");
    tentative.className = "tentative";
    tentative.textContent = frame.text.slice(stable);
    text.replaceChildren(settled, tentative);
  }

  trim() {
    while (this.shown.size > this.maxLines) {
      const [oldest] = this.shown.keys();
      this.remove(oldest);
    }
  }

  fade(segmentId) {
    const entry = this.shown.get(segmentId);
    if (!entry) return;
    entry.el.classList.add("fading");
    setTimeout(() => this.remove(segmentId), 1000);
  }

  remove(segmentId) {
    const entry = this.shown.get(segmentId);
    if (!entry) return;
    clearTimeout(entry.timer);
    entry.el.remove();
    this.shown.delete(segmentId);
  }
}
