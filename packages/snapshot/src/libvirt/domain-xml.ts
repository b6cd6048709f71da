/** Reads the few things the flows need from libvirt's domain XML: the domain type and its disks' chains. */
import type { BlockMirror, DiskDefinition, DiskLayer } from '../hypervisor.js';
import { childElement, childElements, parseXml, textContent, type XmlElement } from '../xml/xml-reader.js';

export interface DomainDescription {
  /** The domain element's type attribute: 'kvm', 'qemu', 'xen', 'lxc', … */
  virtType: string;
  name: string;
  /** The <uuid> element ('' when absent). */
  uuid: string;
  disks: DiskDefinition[];
}

/** Reads a domain XML document (throws XmlSyntaxError or Error on anything that is not one). */
export function parseDomainXml(xml: string): DomainDescription {
  const root = parseXml(xml);
  if (root.name !== 'domain') throw new Error(`expected a <domain> document, got <${root.name}>`);
  const nameElement = childElement(root, 'name');
  const uuidElement = childElement(root, 'uuid');
  const devices = childElement(root, 'devices');
  return {
    virtType: root.attributes.type ?? '',
    name: nameElement === undefined ? '' : textContent(nameElement).trim(),
    uuid: uuidElement === undefined ? '' : textContent(uuidElement).trim(),
    disks: devices === undefined ? [] : childElements(devices, 'disk').map(parseDisk),
  };
}

/** The path a <source> element names for a disk of this type (file, block device or directory). */
function sourcePath(type: string, source: XmlElement | undefined): string | undefined {
  if (source === undefined) return undefined;
  const a = source.attributes;
  switch (type) {
    case 'file':
      return a.file;
    case 'block':
      return a.dev;
    case 'dir':
      return a.dir;
    default:
      return undefined;
  }
}

function dataFileOf(source: XmlElement | undefined): string | undefined {
  const dataStore = source === undefined ? undefined : childElement(source, 'dataStore');
  if (dataStore === undefined) return undefined;
  const type = dataStore.attributes.type ?? 'file';
  return sourcePath(type, childElement(dataStore, 'source'));
}

function parseDisk(disk: XmlElement): DiskDefinition {
  const type = disk.attributes.type ?? 'file';
  const source = childElement(disk, 'source');
  const target = childElement(disk, 'target');
  const top: DiskLayer = { type, path: sourcePath(type, source), format: childElement(disk, 'driver')?.attributes.type };
  const dataFile = dataFileOf(source);
  if (dataFile !== undefined) top.dataFile = dataFile;
  const chain: DiskLayer[] = [top];
  let complete = false;
  // <backingStore> absent: the XML does not say (inactive definitions); empty: the chain ends here.
  let backing = childElement(disk, 'backingStore');
  while (backing !== undefined) {
    const layerSource = childElement(backing, 'source');
    if (backing.attributes.type === undefined && layerSource === undefined) {
      complete = true;
      break;
    }
    const layerType = backing.attributes.type ?? 'file';
    const layer: DiskLayer = { type: layerType, path: sourcePath(layerType, layerSource), format: childElement(backing, 'format')?.attributes.type };
    const layerDataFile = dataFileOf(layerSource);
    if (layerDataFile !== undefined) layer.dataFile = layerDataFile;
    chain.push(layer);
    backing = childElement(backing, 'backingStore');
  }
  const mirror = mirrorOf(childElement(disk, 'mirror'));
  return {
    ...(mirror === undefined ? {} : { mirror }),
    target: target?.attributes.dev ?? '',
    bus: target?.attributes.bus,
    device: disk.attributes.device ?? 'disk',
    readonly: childElement(disk, 'readonly') !== undefined,
    alias: childElement(disk, 'alias')?.attributes.name,
    chain,
    chainComplete: complete,
  };
}

/**
 * <mirror>: a block job writing into another image. A copy names its destination in the file attribute (and in
 * <source>); an active commit names its base in <source>. ready='yes' once it caught up ('pivot' or 'abort' while
 * it is being completed or cancelled).
 */
function mirrorOf(mirror: XmlElement | undefined): BlockMirror | undefined {
  if (mirror === undefined) return undefined;
  const type = mirror.attributes.type ?? 'file';
  return {
    job: mirror.attributes.job ?? 'copy',
    path: mirror.attributes.file ?? sourcePath(type, childElement(mirror, 'source')),
    ready: mirror.attributes.ready === 'yes',
  };
}
