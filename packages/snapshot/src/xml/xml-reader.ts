/**
 * A small, strict XML reader for what libvirt prints (domain XML): elements, attributes, text, comments, CDATA
 * and processing instructions, the five predefined entities and character references. No DTD (a DOCTYPE is
 * refused, so no entity can expand into anything), no namespaces processing (prefixed names are kept as they
 * are), and anything malformed throws XmlSyntaxError with the offset, instead of guessing.
 */

export interface XmlElement {
  name: string;
  attributes: Readonly<Record<string, string>>;
  children: XmlNode[];
}

export type XmlNode = XmlElement | string;

export class XmlSyntaxError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`XML syntax error at offset ${offset}: ${message}`);
    this.name = 'XmlSyntaxError';
  }
}

const MAX_DEPTH = 256;
const NAME_START = /[A-Za-z_:\u00C0-\uFFFF]/;
const NAME_CHAR = /[-A-Za-z0-9_:.\u00B7\u00C0-\uFFFF]/;
const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/** Parses a whole document and returns its root element. */
export function parseXml(text: string): XmlElement {
  return new Reader(text).document();
}

class Reader {
  private pos = 0;

  constructor(private readonly text: string) {}

  private fail(message: string, at = this.pos): never {
    throw new XmlSyntaxError(message, at);
  }

  private startsWith(token: string): boolean {
    return this.text.startsWith(token, this.pos);
  }

  private expect(token: string): void {
    if (!this.startsWith(token)) this.fail(`expected '${token}'`);
    this.pos += token.length;
  }

  private skipSpace(): void {
    while (this.pos < this.text.length && /\s/.test(this.text[this.pos]!)) this.pos++;
  }

  /** Skips `<?…?>`, `<!--…-->` (and refuses a DOCTYPE); returns whether it skipped anything. */
  private skipMisc(): boolean {
    if (this.startsWith('<?')) {
      const end = this.text.indexOf('?>', this.pos + 2);
      if (end < 0) this.fail('unterminated processing instruction');
      this.pos = end + 2;
      return true;
    }
    if (this.startsWith('<!--')) {
      const end = this.text.indexOf('-->', this.pos + 4);
      if (end < 0) this.fail('unterminated comment');
      this.pos = end + 3;
      return true;
    }
    if (this.startsWith('<!DOCTYPE')) this.fail('DOCTYPE is not accepted');
    return false;
  }

  document(): XmlElement {
    if (this.text.charCodeAt(0) === 0xfeff) this.pos = 1;
    for (;;) {
      this.skipSpace();
      if (!this.skipMisc()) break;
    }
    if (!this.startsWith('<')) this.fail('expected the root element');
    const root = this.element();
    for (;;) {
      this.skipSpace();
      if (this.pos >= this.text.length) return root;
      if (!this.skipMisc()) this.fail('content after the root element');
    }
  }

  private name(): string {
    const start = this.pos;
    if (this.pos >= this.text.length || !NAME_START.test(this.text[this.pos]!)) this.fail('expected a name');
    this.pos++;
    while (this.pos < this.text.length && NAME_CHAR.test(this.text[this.pos]!)) this.pos++;
    return this.text.slice(start, this.pos);
  }

  /** Reads one element and everything inside it, iteratively (no recursion on nesting depth). */
  private element(): XmlElement {
    const root = this.startTag();
    if (root.selfClosing) return root.element;
    const stack: XmlElement[] = [root.element];
    while (stack.length > 0) {
      const current = stack[stack.length - 1]!;
      if (this.pos >= this.text.length) this.fail(`unterminated element <${current.name}>`);
      if (this.startsWith('</')) {
        const at = this.pos;
        this.pos += 2;
        const name = this.name();
        this.skipSpace();
        this.expect('>');
        if (name !== current.name) this.fail(`</${name}> closes <${current.name}>`, at);
        stack.pop();
      } else if (this.startsWith('<![CDATA[')) {
        const end = this.text.indexOf(']]>', this.pos + 9);
        if (end < 0) this.fail('unterminated CDATA section');
        appendText(current, this.text.slice(this.pos + 9, end));
        this.pos = end + 3;
      } else if (this.skipMisc()) {
        continue;
      } else if (this.startsWith('<')) {
        if (stack.length >= MAX_DEPTH) this.fail(`elements nested deeper than ${MAX_DEPTH}`);
        const child = this.startTag();
        current.children.push(child.element);
        if (!child.selfClosing) stack.push(child.element);
      } else {
        const end = this.text.indexOf('<', this.pos);
        const raw = this.text.slice(this.pos, end < 0 ? this.text.length : end);
        appendText(current, this.decode(raw, this.pos));
        this.pos += raw.length;
      }
    }
    return root.element;
  }

  private startTag(): { element: XmlElement; selfClosing: boolean } {
    this.expect('<');
    const name = this.name();
    const attributes: Record<string, string> = Object.create(null) as Record<string, string>;
    for (;;) {
      const hadSpace = this.pos < this.text.length && /\s/.test(this.text[this.pos]!);
      this.skipSpace();
      if (this.startsWith('/>')) {
        this.pos += 2;
        return { element: { name, attributes, children: [] }, selfClosing: true };
      }
      if (this.startsWith('>')) {
        this.pos += 1;
        return { element: { name, attributes, children: [] }, selfClosing: false };
      }
      if (!hadSpace) this.fail(`expected whitespace, '>' or '/>' in <${name}>`);
      const at = this.pos;
      const attribute = this.name();
      this.skipSpace();
      this.expect('=');
      this.skipSpace();
      const quote = this.text[this.pos];
      if (quote !== '"' && quote !== "'") this.fail('expected a quoted attribute value');
      const end = this.text.indexOf(quote, this.pos + 1);
      if (end < 0) this.fail('unterminated attribute value');
      const raw = this.text.slice(this.pos + 1, end);
      if (raw.includes('<')) this.fail("'<' in an attribute value", this.pos + 1);
      if (Object.prototype.hasOwnProperty.call(attributes, attribute)) this.fail(`duplicate attribute '${attribute}'`, at);
      // Attribute value normalization: literal whitespace characters become spaces (character references stay).
      attributes[attribute] = this.decode(raw.replace(/[\t\n\r]/g, ' '), this.pos + 1);
      this.pos = end + 1;
    }
  }

  /** Replaces entity and character references in text or an attribute value. */
  private decode(raw: string, offset: number): string {
    if (!raw.includes('&')) return raw;
    return raw.replace(/&([^;&\s]*);?/g, (match: string, body: string, index: number) => {
      if (!match.endsWith(';')) this.fail(`unterminated reference '${match}'`, offset + index);
      if (body.startsWith('#')) {
        const code = body[1] === 'x' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
        const digits = body[1] === 'x' ? /^#x[0-9A-Fa-f]+$/ : /^#[0-9]+$/;
        if (!digits.test(body) || !Number.isFinite(code) || code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
          this.fail(`bad character reference '${match}'`, offset + index);
        }
        return String.fromCodePoint(code);
      }
      const value = ENTITIES[body];
      if (value === undefined) this.fail(`unknown entity '${match}'`, offset + index);
      return value;
    });
  }
}

function appendText(element: XmlElement, text: string): void {
  if (text === '') return;
  const last = element.children[element.children.length - 1];
  if (typeof last === 'string') element.children[element.children.length - 1] = last + text;
  else element.children.push(text);
}

/** The child elements of `element`, optionally only those named `name`. */
export function childElements(element: XmlElement, name?: string): XmlElement[] {
  return element.children.filter((c): c is XmlElement => typeof c !== 'string' && (name === undefined || c.name === name));
}

/** The first child element named `name`. */
export function childElement(element: XmlElement, name: string): XmlElement | undefined {
  return element.children.find((c): c is XmlElement => typeof c !== 'string' && c.name === name);
}

/** The element's text content (its own text nodes and those of its descendants), as written. */
export function textContent(element: XmlElement): string {
  return element.children.map((c) => (typeof c === 'string' ? c : textContent(c))).join('');
}

/** Escapes text for an XML attribute value or text node. */
export function escapeXml(value: string): string {
  return value.replace(/[<>&"']/g, (c) => `&${Object.keys(ENTITIES).find((k) => ENTITIES[k] === c)!};`);
}
