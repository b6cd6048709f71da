/**
 * The size in which bulk writes are issued. A write that covers a whole 2 MiB-aligned range of a file makes
 * Linux (6.x, ext4 with large folios) give it a huge page-cache folio, which measured 3 to 5 times the system
 * time per byte of 1 MiB writes (issue 10, bench/README.md); 1 MiB still amortises each call.
 */
export const WRITE_CHUNK = 1024 * 1024;
