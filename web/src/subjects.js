// Subject tokens exactly as protocol/subjects.py writes them: bytes outside [A-Za-z0-9_-]
// become "~" + two upper-case hex digits of their UTF-8 encoding.
const SAFE = /^[A-Za-z0-9_-]$/;
const encoder = new TextEncoder();

export function encodeToken(id) {
  if (!id) throw new Error("an id must not be empty");
  let out = "";
  for (const ch of id) {
    if (SAFE.test(ch)) {
      out += ch;
    } else {
      for (const byte of encoder.encode(ch)) {
        out += "~" + byte.toString(16).toUpperCase().padStart(2, "0");
      }
    }
  }
  return out;
}

export function roomCaptions(prefix, room) {
  return `${prefix}.v1.captions.${encodeToken(room)}.>`;
}
