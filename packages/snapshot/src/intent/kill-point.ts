/**
 * A test hook: with QCOWKIT_TEST_KILL_AT=STEP (or STEP#N for its Nth time), the process kills itself with SIGKILL
 * when a run reaches that step — after the intent log announced it, before the step acts. The crash tests use it
 * to stop `vm snapshot` at every step and check that `vm recover` brings the guest back. Unset, it does nothing.
 */
const reached = new Map<string, number>();

export function killPoint(step: string): void {
  const at = process.env.QCOWKIT_TEST_KILL_AT;
  if (at === undefined || at === '') return;
  const count = (reached.get(step) ?? 0) + 1;
  reached.set(step, count);
  if (at === step || at === `${step}#${count}`) process.kill(process.pid, 'SIGKILL');
}
