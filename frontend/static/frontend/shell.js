// Every logged-in page: the live connection (its state in the top bar) and the role gating of
// the controls the page's template marks with data-needs.
import "./live.js";
import { applyRole } from "./dom.js";

applyRole();
