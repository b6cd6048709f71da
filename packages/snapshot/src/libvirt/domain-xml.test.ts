import { describe, expect, it } from 'vitest';
import { parseDomainXml } from './domain-xml.js';

/** `virsh dumpxml` of a running guest (libvirt 9.0, QEMU 7.2): the chain is listed, closed by <backingStore/>. */
const LIVE = `<domain type='kvm' id='1'>
  <name>qk-probe</name>
  <uuid>3da73f34-c0b0-4702-825b-2174a69a47ad</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/tmp/vt/ov.qcow2' index='5'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/>
        <source file='/tmp/vt/top.qcow2'/>
        <backingStore type='file' index='2'>
          <format type='qcow2'/>
          <source file='/tmp/vt/base.qcow2'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/data' index='6'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
      <alias name='virtio-disk1'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'><host name='mon1' port='6789'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'/>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+0:+0</label></seclabel>
</domain>
`;

/** `virsh dumpxml --inactive` of the same guest: no backingStore at all (the chain is not described). */
const INACTIVE = `<domain type='qemu'>
  <name>a&amp;b</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/images/disk &amp; more.qcow2'>
        <dataStore type='file'><format type='raw'/><source file='/var/lib/images/data.raw'/></dataStore>
      </source>
      <target dev='sda' bus='scsi'/>
    </disk>
  </devices>
</domain>`;

describe('parseDomainXml', () => {
  it('reads the domain type and name', () => {
    const live = parseDomainXml(LIVE);
    expect(live.virtType).toBe('kvm');
    expect(live.name).toBe('qk-probe');
    expect(parseDomainXml(INACTIVE).name).toBe('a&b');
  });

  it('reads a running disk with its whole chain, formats from driver and backingStore', () => {
    const [vda] = parseDomainXml(LIVE).disks;
    expect(vda).toEqual({
      target: 'vda',
      bus: 'virtio',
      device: 'disk',
      readonly: false,
      alias: 'virtio-disk0',
      chain: [
        { type: 'file', path: '/tmp/vt/ov.qcow2', format: 'qcow2' },
        { type: 'file', path: '/tmp/vt/top.qcow2', format: 'qcow2' },
        { type: 'file', path: '/tmp/vt/base.qcow2', format: 'qcow2' },
      ],
      chainComplete: true,
    });
  });

  it('reads block devices, cdroms without media and network disks', () => {
    const [, vdb, hdc, vdc] = parseDomainXml(LIVE).disks;
    expect(vdb).toMatchObject({ target: 'vdb', readonly: true, chain: [{ type: 'block', path: '/dev/vg/data', format: 'raw' }], chainComplete: true });
    expect(hdc).toMatchObject({ target: 'hdc', device: 'cdrom', chain: [{ type: 'file', path: undefined, format: 'raw' }] });
    expect(vdc).toMatchObject({ target: 'vdc', chain: [{ type: 'network', path: undefined, format: 'raw' }] });
  });

  it('marks an inactive definition without backingStore as an incomplete chain, and reads a data file', () => {
    const [sda] = parseDomainXml(INACTIVE).disks;
    expect(sda).toMatchObject({
      target: 'sda',
      chain: [{ type: 'file', path: '/var/lib/images/disk & more.qcow2', format: 'qcow2', dataFile: '/var/lib/images/data.raw' }],
      chainComplete: false,
      alias: undefined,
    });
  });

  it('reads the UUID', () => {
    expect(parseDomainXml(LIVE).uuid).toBe('3da73f34-c0b0-4702-825b-2174a69a47ad');
    expect(parseDomainXml(INACTIVE).uuid).toBe('');
  });

  it("reads a disk's block job: a copy's destination, an active commit's base, and whether it is ready", () => {
    // libvirt 9.0's live XML during `blockcopy --shallow --reuse-external --transient-job` (ready), then during
    // `blockcommit --active --shallow` before its pivot.
    const copy = `<domain type='qemu'><name>g</name><devices><disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/tmp/vm/vda.qcow2' index='2'/>
      <backingStore type='file' index='4'><format type='raw'/><source file='/tmp/vm/root.raw'/><backingStore/></backingStore>
      <mirror type='file' file='/tmp/vm/delta.qcow2' format='qcow2' job='copy' ready='yes'>
        <format type='qcow2'/>
        <source file='/tmp/vm/delta.qcow2' index='7'/>
        <backingStore type='file' index='8'><format type='raw'/><source file='/tmp/vm/root.raw'/><backingStore/></backingStore>
      </mirror>
      <target dev='vda' bus='virtio'/></disk></devices></domain>`;
    const [copying] = parseDomainXml(copy).disks;
    expect(copying!.mirror).toEqual({ job: 'copy', path: '/tmp/vm/delta.qcow2', ready: true });
    expect(copying!.chain.map((l) => l.path)).toEqual(['/tmp/vm/vda.qcow2', '/tmp/vm/root.raw']);
    const commit = copy
      .replace(/<mirror[\s\S]*<\/mirror>/, "<mirror type='file' job='active-commit'><format type='qcow2'/><source file='/tmp/vm/vda.qcow2' index='2'/></mirror>")
      .replace("<source file='/tmp/vm/vda.qcow2' index='2'/>", "<source file='/tmp/vm/ov.qcow2' index='5'/>");
    expect(parseDomainXml(commit).disks[0]!.mirror).toEqual({ job: 'active-commit', path: '/tmp/vm/vda.qcow2', ready: false });
    expect(parseDomainXml(LIVE).disks[0]!.mirror).toBeUndefined();
  });

  it('refuses what is not a domain', () => {
    expect(() => parseDomainXml('<network/>')).toThrow(/expected a <domain>/);
    expect(() => parseDomainXml('<domain>')).toThrow(/unterminated/);
  });
});
