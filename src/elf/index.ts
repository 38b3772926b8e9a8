export * from './bytes.js';
export * from './constants.js';
export * from './file.js';
export * from './symbols.js';
export * from './relocations.js';
export * from './notes.js';
export * from './symindex.js';
export * from './dynamic.js';
