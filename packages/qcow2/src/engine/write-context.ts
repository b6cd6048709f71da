/** Reads what lies below this image (the backing chain, or zeros) for guest bytes it does not hold. */
export type BelowReader = (dest: Uint8Array, guestOffset: number) => Promise<void>;
