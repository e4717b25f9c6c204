// ESLint over the dashboard's ES modules and their unit tests (`make lint` runs it from the
// repository root: `frontend/node_modules/.bin/eslint -c frontend/eslint.config.js ...`).
import js from "@eslint/js";
import globals from "globals";

export default [
  js.configs.recommended,
  {
    // The dashboard: ES modules in the browser; Plotly is the one global (a classic <script>).
    files: ["frontend/static/frontend/**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: { ...globals.browser, Plotly: "readonly" },
    },
  },
  {
    // node --test files and this config.
    files: ["tests/js/**/*.mjs", "frontend/eslint.config.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: globals.node },
  },
  {
    rules: {
      "no-unused-vars": ["error", { args: "after-used" }],
      "no-shadow": "error",
      "no-var": "error",
      "prefer-const": "error",
      eqeqeq: ["error", "always"],
      "no-implicit-globals": "error",
      "max-lines": ["error", { max: 400 }],
      "max-lines-per-function": ["error", { max: 60 }],
    },
  },
];
