#!/usr/bin/env node
// Committed launcher, so npm can link the `qcowkit` bin on install before the TypeScript build has run.
import '../dist/main.js';
