/**
 * The test toolchain, split by job; this module gathers them for the test
 * files: repo.ts (where things are), binutils.ts (running and reading
 * with binutils), recipes.ts (how fixtures are built), fixture-cache.ts
 * (building them once), launcher.ts (running a base program).
 */
export { FIXTURES_DIR } from './repo.js';
export * from './binutils.js';
export * from './recipes.js';
export { buildAll } from './fixture-cache.js';
export * from './launcher.js';
