// Worker entry: Node 20 workers do not take --import in execArgv, so tsx is registered here, then the
// TypeScript worker loads.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
