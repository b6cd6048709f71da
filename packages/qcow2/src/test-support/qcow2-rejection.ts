import { expect } from 'vitest';
import { Qcow2Error } from '../errors.js';

/** The Qcow2Error `promise` rejects with (and fails the test when it resolves or rejects with anything else). */
export async function qcow2Rejection(promise: Promise<unknown>): Promise<Qcow2Error> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Qcow2Error);
  return error as Qcow2Error;
}
