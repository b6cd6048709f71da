import type { Storage } from '../io/storage.js';

/**
 * How the engine reaches files other than the one it was handed: backing files and external data files. The
 * host passes this in (Node: the file system; a browser: whatever it has), so the engine never imports one.
 */
export interface HostFiles {
  open(name: string, options: { writable: boolean }): Promise<Storage>;
  /** Creates a file (emptying one that exists) and opens it for writing; hosts that cannot, leave it out. */
  create?(name: string): Promise<Storage>;
  /** A canonical identity for `name` (Node: its real path), used to detect backing loops through other names. */
  canonical?(name: string): Promise<string>;
}

/** A reference an image makes to another file, offered to the open policy before anything is opened. */
export interface FileReference {
  /** 'extent': a file holding part of a VMDK's data, named by its descriptor. */
  kind: 'backing' | 'data-file' | 'extent';
  /** The name as stored in the image. */
  name: string;
  /** The name after resolution against the image's directory. */
  resolved: string;
  /** The image that holds the reference. */
  from: string;
}

/**
 * Decides whether a reference may be followed: return to allow, throw to refuse. Like imago's gates, this is the
 * one place a safe mode lives, instead of checks sprinkled through the engine.
 */
export type ReferenceGate = (reference: FileReference) => void | Promise<void>;
