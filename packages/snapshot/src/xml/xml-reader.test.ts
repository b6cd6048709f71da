import { describe, expect, it } from 'vitest';
import { childElement, childElements, escapeXml, parseXml, textContent, XmlSyntaxError } from './xml-reader.js';

describe('parseXml', () => {
  it('reads elements, attributes in both quotes, text, self-closing tags', () => {
    const root = parseXml(`<?xml version="1.0"?>\n<a x="1" y='two'><b/>text<c k="v">inner</c></a>\n`);
    expect(root.name).toBe('a');
    expect(root.attributes).toEqual({ x: '1', y: 'two' });
    expect(childElements(root).map((e) => e.name)).toEqual(['b', 'c']);
    expect(childElement(root, 'c')?.attributes.k).toBe('v');
    expect(textContent(root)).toBe('textinner');
  });

  it('decodes the predefined entities and character references, in text and attributes', () => {
    const root = parseXml(`<a v="&lt;&amp;&quot;&apos;&gt; &#65;&#x42;">&lt;x&gt; &amp; &#x1F600;</a>`);
    expect(root.attributes.v).toBe(`<&"'> AB`);
    expect(textContent(root)).toBe('<x> & \u{1F600}');
  });

  it('keeps CDATA literally and skips comments and processing instructions', () => {
    const root = parseXml(`<!-- c --><a><!-- inside --><![CDATA[<not> &amp; a tag]]><?pi x?></a><!-- after -->`);
    expect(textContent(root)).toBe('<not> &amp; a tag');
  });

  it('normalizes whitespace characters in attribute values', () => {
    expect(parseXml(`<a v="x\ny\tz"/>`).attributes.v).toBe('x y z');
  });

  it('keeps prefixed (namespaced) names as written', () => {
    const root = parseXml(`<domain xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><metadata><nova:instance><nova:name>vm</nova:name></nova:instance></metadata></domain>`);
    const instance = childElement(childElement(root, 'metadata')!, 'nova:instance')!;
    expect(textContent(instance)).toBe('vm');
  });

  it('handles a byte order mark', () => {
    expect(parseXml('\uFEFF<a/>').name).toBe('a');
  });

  it.each([
    ['mismatched end tag', '<a><b></a></b>'],
    ['unterminated element', '<a><b></b>'],
    ['two roots', '<a/><b/>'],
    ['text after the root', '<a/>x'],
    ['unknown entity', '<a>&nbsp;</a>'],
    ['unterminated reference', '<a>&amp</a>'],
    ['bare ampersand', '<a>a & b</a>'],
    ['character reference to NUL', '<a>&#0;</a>'],
    ['surrogate character reference', '<a>&#xD800;</a>'],
    ['duplicate attribute', '<a x="1" x="2"/>'],
    ['unquoted attribute', '<a x=1/>'],
    ['attribute without whitespace', '<a x="1"y="2"/>'],
    ['< in attribute', '<a x="<"/>'],
    ['DOCTYPE (no entity definitions)', '<!DOCTYPE a [<!ENTITY e "boom">]><a>&e;</a>'],
    ['unterminated comment', '<a><!-- </a>'],
    ['unterminated CDATA', '<a><![CDATA[ </a>'],
    ['empty document', ''],
    ['bad name', '<1a/>'],
  ])('refuses %s', (_what, text) => {
    expect(() => parseXml(text)).toThrow(XmlSyntaxError);
  });

  it('refuses absurd nesting instead of overflowing the stack', () => {
    expect(() => parseXml('<a>'.repeat(10_000) + '</a>'.repeat(10_000))).toThrow(/deeper than/);
  });

  it('reads a large flat document', () => {
    const doc = `<r>${'<disk type="file"><source file="/x"/></disk>'.repeat(20_000)}</r>`;
    expect(childElements(parseXml(doc)).length).toBe(20_000);
  });
});

describe('escapeXml', () => {
  it('round-trips through the reader', () => {
    const value = `a<b>&"c'd`;
    expect(parseXml(`<a v="${escapeXml(value)}">${escapeXml(value)}</a>`).attributes.v).toBe(value);
  });
});
