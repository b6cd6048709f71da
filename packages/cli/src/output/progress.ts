/**
 * qemu-img's -p progress line: "    (NN.NN/100%)" rewritten in place with a carriage return, on stdout, printed
 * only when the percentage moves by at least 1% (as qemu does), and finished with a newline.
 */
export function progressPrinter(enabled: boolean): { update: (done: number, total: number) => void; finish: () => void } {
  let last = -1;
  const print = (percent: number): void => {
    process.stdout.write(`    (${percent.toFixed(2)}/100%)\r`);
  };
  // qemu-img shows 0.00% as soon as the operation starts.
  if (enabled) {
    last = 0;
    print(0);
  }
  return {
    update(done, total) {
      if (!enabled) return;
      const percent = total === 0 ? 100 : (done / total) * 100;
      if (last < 0 || percent - last >= 1 || (percent === 100 && last !== 100)) {
        last = percent;
        print(percent);
      }
    },
    finish() {
      if (!enabled) return;
      if (last !== 100) print(100);
      process.stdout.write('\n');
    },
  };
}
