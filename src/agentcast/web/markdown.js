/**
 * A small, safe Markdown renderer for agent answers: headings, paragraphs,
 * bullet and numbered lists, code blocks, **bold**, _emphasis_, `code` and
 * http(s) links. It builds DOM nodes and never parses HTML, so nothing an
 * agent writes can inject markup.
 *
 * It never loads a remote image: `![alt](url)` becomes a plain link labelled
 * "image: alt" that the user may choose to open. A model's answer can be steered
 * by a prompt injection, and an image URL that carries data in its query string
 * is fetched the moment it is rendered: the classic way to leak a conversation.
 * The page's Content-Security-Policy (`img-src 'self' data:`) stops it too.
 *
 * @module markdown
 */

const INLINE = /(\*\*[^*\n]+\*\*|__[^_\n]+__|`[^`\n]+`|\*[^*\s][^*\n]*\*|_[^_\s][^_\n]*_|!?\[[^\]\n]*\]\([^)\s]+\))/;

/**
 * Append `text` to `parent` with inline formatting.
 * @param {ParentNode} parent
 * @param {string} text
 */
function appendInline(parent, text) {
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    let node;
    if (/^(\*\*|__).+\1$/.test(part)) {
      node = document.createElement("strong");
      appendInline(node, part.slice(2, -2));
    } else if (/^`.+`$/.test(part)) {
      node = document.createElement("code");
      node.textContent = part.slice(1, -1);
    } else if (/^([*_]).+\1$/.test(part)) {
      node = document.createElement("em");
      appendInline(node, part.slice(1, -1));
    } else if (part.startsWith("[") || part.startsWith("![")) {
      const image = part.startsWith("!");
      const match = /^!?\[([^\]]*)\]\(([^)\s]+)\)$/.exec(part);
      if (match && /^https?:\/\//.test(match[2])) {
        node = document.createElement("a");
        node.href = match[2];
        node.rel = "noopener noreferrer";
        node.target = "_blank";
        const label = match[1] || match[2];
        node.textContent = image ? `image: ${label}` : label;
        if (image) node.className = "image-link";
      }
    }
    parent.append(node ?? document.createTextNode(part));
  }
}

/**
 * Render Markdown `text` into a fragment.
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  /** @type {HTMLElement|null} */
  let list = null;
  /** @type {string[]} */
  let paragraph = [];

  const flushParagraph = () => {
    if (!paragraph.length) return;
    const p = document.createElement("p");
    appendInline(p, paragraph.join(" "));
    fragment.append(p);
    paragraph = [];
  };
  const closeList = () => {
    list = null;
  };

  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    if (/^```/.test(line)) {
      flushParagraph();
      closeList();
      const code = [];
      for (i += 1; i < lines.length && !/^```/.test(lines[i]); i += 1) code.push(lines[i]);
      const pre = document.createElement("pre");
      const el = document.createElement("code");
      el.textContent = code.join("\n");
      pre.append(el);
      fragment.append(pre);
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    if (heading) {
      flushParagraph();
      closeList();
      // Answers sit inside the page: their headings start at h3.
      const h = document.createElement(`h${Math.min(6, heading[1].length + 1)}`);
      appendInline(h, heading[2]);
      fragment.append(h);
    } else if (bullet || numbered) {
      flushParagraph();
      const tag = bullet ? "UL" : "OL";
      if (!list || list.tagName !== tag) {
        list = document.createElement(tag.toLowerCase());
        fragment.append(list);
      }
      const li = document.createElement("li");
      appendInline(li, /** @type {RegExpExecArray} */ (bullet ?? numbered)[1]);
      list.append(li);
    } else if (!line.trim()) {
      flushParagraph();
      closeList();
    } else {
      closeList();
      paragraph.push(line.trim());
    }
  }
  flushParagraph();
  return fragment;
}
