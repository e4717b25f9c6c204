// The dashboard's value formatting and parsing (frontend/static/frontend/format.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  byteUnit, epoch, errorText, fieldErrors, fmt, isNum, limitLevel, limitShare, numberFieldValue,
} from "../../frontend/static/frontend/format.js";

test("isNum accepts finite numbers only", () => {
  assert.deepEqual([0, -1.5, 1e300].map(isNum), [true, true, true]);
  assert.deepEqual([NaN, Infinity, "1", null, undefined].map(isNum), [false, false, false, false, false]);
});

test("numbers are formatted with their unit, unknown values as a dash", () => {
  assert.equal(fmt.auc(0.74219), "0.7422");
  assert.equal(fmt.ms(11.04), "11.0 ms");
  assert.equal(fmt.pct(1.1), "1.10 %");
  assert.equal(fmt.pct(1.1, 0), "1 %");
  assert.equal(fmt.num(0.123456, 4), "0.1235");
  for (const f of [fmt.auc, fmt.ms, fmt.pct, fmt.num, fmt.secs, fmt.bytes, fmt.time]) {
    assert.equal(f(null), "–");
    assert.equal(f(NaN), "–");
  }
});

test("seconds switch to minutes from 2 minutes on", () => {
  assert.equal(fmt.secs(1.5), "1.5 s");
  assert.equal(fmt.secs(119.9), "119.9 s");
  assert.equal(fmt.secs(120), "2.0 min");
  assert.equal(fmt.secs(757), "12.6 min");
});

test("bytes use binary units, whole bytes without decimals", () => {
  assert.equal(fmt.bytes(0), "0 B");
  assert.equal(fmt.bytes(1023), "1023 B");
  assert.equal(fmt.bytes(1024), "1.0 KiB");
  assert.equal(fmt.bytes(180_000), "175.8 KiB");
  assert.equal(fmt.bytes(4.1e9), "3.8 GiB");
  assert.equal(fmt.bytes(3 * 1024 ** 5), "3072.0 TiB"); // no unit above TiB
  assert.equal(fmt.bytes(-2048), "-2.0 KiB");
});

test("a time in the past reads as seconds, minutes or hours ago", () => {
  const now = 1_800_000_000;
  assert.equal(fmt.ago(now - 5, now), "5 s ago");
  assert.equal(fmt.ago(now - 89, now), "89 s ago");
  assert.equal(fmt.ago(now - 90, now), "2 min ago");
  assert.equal(fmt.ago(now - 5399, now), "90 min ago");
  assert.equal(fmt.ago(now - 5400, now), "1.5 h ago");
  assert.equal(fmt.ago(now + 30, now), "0 s ago"); // a clock ahead of ours is not "in -30 s"
  assert.equal(fmt.ago(null, now), "never");
});

test("ranks are listed by table name", () => {
  assert.equal(fmt.ranks({ user: { rank: 6 }, item: { rank: 4 } }), "item: 4, user: 6");
  assert.equal(fmt.ranks({}), "–");
  assert.equal(fmt.ranks(undefined), "–");
});

test("plural", () => {
  assert.equal(fmt.plural(1, "node"), "1 node");
  assert.equal(fmt.plural(0, "node"), "0 nodes");
  assert.equal(fmt.plural(3, "open alert"), "3 open alerts");
});

test("epoch reads the API's ISO times as Unix seconds", () => {
  assert.equal(epoch("2026-12-06T00:00:00Z"), 1796515200);
  assert.equal(epoch("2026-12-06T00:00:01.500+00:00"), 1796515201.5);
  assert.equal(epoch(null), null);
  assert.equal(epoch(""), null);
});

test("byteUnit picks the largest unit the biggest value reaches", () => {
  assert.deepEqual(byteUnit([0, 4.1e9, 6.2e8, null]), ["GiB", 1024 ** 3]);
  assert.deepEqual(byteUnit([1000, 1023]), ["B", 1]);
  assert.deepEqual(byteUnit([1024]), ["KiB", 1024]);
  assert.deepEqual(byteUnit([]), ["B", 1]);
  assert.deepEqual(byteUnit([NaN, undefined]), ["B", 1]);
});

test("a value is ok up to 80% of its limit, warn above, bad over it", () => {
  assert.equal(limitLevel(16, 20), "ok");
  assert.equal(limitLevel(16.5, 20), "warn");
  assert.equal(limitLevel(20, 20), "warn");
  assert.equal(limitLevel(27.5, 20), "bad");
  assert.equal(limitLevel(27.5, null), "");
  assert.equal(limitLevel(undefined, 20), "");
});

test("the share of a limit is clamped to [0, 1]", () => {
  assert.equal(limitShare(5, 20), 0.25);
  assert.equal(limitShare(27.5, 20), 1);
  assert.equal(limitShare(-3, 20), 0);
  assert.equal(limitShare(5, 0), 0);
  assert.equal(limitShare(5, undefined), 0);
});

test("DRF field errors become one text per field", () => {
  assert.deepEqual(fieldErrors({ tau: ["Must be >= 0.5 and <= 1.0."], r_max: ["a", "b"] }),
    { tau: "Must be >= 0.5 and <= 1.0.", r_max: "a b" });
  assert.deepEqual(fieldErrors({ samples: { 1: ["bad"] } }), { samples: '{"1":["bad"]}' });
  assert.deepEqual(fieldErrors(null), { non_field_errors: "null" });
  assert.deepEqual(fieldErrors("boom"), { non_field_errors: "boom" });
});

test("errorText names each field, but not detail or non-field errors", () => {
  assert.equal(errorText({ status: 400, data: { tau: ["too big"], detail: "Bad request." } }),
    "tau: too big; Bad request.");
  assert.equal(errorText({ status: 403, data: { detail: "Forbidden." } }), "Forbidden.");
  assert.equal(errorText({ status: 502, data: {} }), "HTTP 502");
});

test("a number field is a number, null when empty, or its text for the API to reject", () => {
  assert.equal(numberFieldValue(" 0.95 "), 0.95);
  assert.equal(numberFieldValue("12"), 12);
  assert.equal(numberFieldValue("1e-3"), 0.001);
  assert.equal(numberFieldValue(""), null);
  assert.equal(numberFieldValue("  "), null);
  assert.equal(numberFieldValue("", true), "not a number");
  assert.equal(numberFieldValue("1.5.2"), "1.5.2");
  assert.equal(numberFieldValue("Infinity"), "Infinity");
});
