// Lint for `npm test`: typescript-eslint's recommended rules on the sources,
// benchmarks, examples and tests. Compiled output and fixtures are not ours to lint.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'test/fixtures/**', 'bench/fixtures/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      // `catch {}` with a comment is how we say "deliberately nothing to do".
      'no-empty': ['error', { allowEmptyCatch: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
);
