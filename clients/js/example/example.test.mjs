// The example page in headless Chromium (Debian's `chromium`, or $CHROMIUM_BIN) driven
// by playwright-core: log in, call through Envoy (200), refresh, call (200), revoke,
// call (401), with each key type. The test writes a screenshot to
// test-output/example-<alg>.png and checks it:
// the page's green 200 rows and red 401 row must be in the picture.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

import { startControlPlane, startUpstream, startEnvoy, eventually } from '../test/support.mjs';
import { startExample } from './server.mjs';

const outDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'test-output');
let cp;
let upstream;
let envoy;
let example;
let profile;
let browser;

before(async () => {
  cp = await startControlPlane();
  upstream = await startUpstream();
  envoy = await startEnvoy(cp.port, upstream.port);
  example = await startExample({ controlPlane: cp.url, edge: envoy.url, adminSecret: cp.admin });
  profile = mkdtempSync(join(tmpdir(), 'pq-chromium-'));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1000, height: 700 },
  });
});

after(async () => {
  await browser?.close();
  example?.stop();
  envoy?.stop();
  upstream?.stop();
  cp?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Decodes an 8-bit, non-interlaced RGB or RGBA PNG into `{width, height, channels, pixels}`. */
function decodePng(png) {
  assert.equal(png.subarray(0, 8).toString('hex'), '89504e470d0a1a0a', 'PNG signature');
  let offset = 8;
  let width; let height; let channels;
  const data = [];
  while (offset < png.length) {
    const length = png.readUInt32BE(offset);
    const type = png.toString('ascii', offset + 4, offset + 8);
    const chunk = png.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      width = chunk.readUInt32BE(0);
      height = chunk.readUInt32BE(4);
      assert.equal(chunk[8], 8, 'bit depth');
      assert.equal(chunk[12], 0, 'not interlaced');
      channels = { 2: 3, 6: 4 }[chunk[9]];
      assert.ok(channels, `colour type ${chunk[9]}`);
    } else if (type === 'IDAT') {
      data.push(chunk);
    }
    offset += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(data));
  const stride = width * channels;
  const pixels = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? pixels[y * stride + x - channels] : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? pixels[(y - 1) * stride + x - channels] : 0;
      let v = line[x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
        v += pa <= pb && pa <= pc ? a : (pb <= pc ? b : c);
      }
      pixels[y * stride + x] = v & 0xff;
    }
  }
  return { width, height, channels, pixels };
}

/** Rows of the picture holding (nearly) the colour `rgb`, as a count of pixels. */
function countColour({ width, height, channels, pixels }, [r, g, b]) {
  let n = 0;
  for (let i = 0; i < width * height; i++) {
    const o = i * channels;
    if (Math.abs(pixels[o] - r) < 8 && Math.abs(pixels[o + 1] - g) < 8 && Math.abs(pixels[o + 2] - b) < 8) n++;
  }
  return n;
}

for (const [alg, user] of [['ES256', 'carol'], ['Ed25519', 'alice'], ['ML-DSA-65', 'bob']]) test(`the example page (${alg} key) shows 200 through Envoy, refreshes, then 401 after the revoke`, async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${example.url}/`);
  const rows = page.locator('#log li');

  await page.fill('#username', user);
  await page.selectOption('#alg', alg);
  await page.click('#login');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('logged in'), null, { timeout: 30000 });
  // P-256 and Ed25519 stay in WebCrypto; ML-DSA-65 has no WebCrypto algorithm (wasm key).
  const kept = alg === 'ML-DSA-65' ? 'false' : 'true';
  assert.match(await page.textContent('#status'), new RegExp(`${alg} key, non-extractable: ${kept}`));

  // The filter may still be fetching keys and the set: call until the first 200.
  const firstOk = await eventually(60000, async () => {
    await page.click('#call');
    await page.waitForFunction(() => !document.getElementById('call').disabled);
    return (await page.getAttribute('#status', 'data-last')) === '200';
  });
  assert.ok(firstOk, `no 200 through Envoy: ${await page.textContent('#log')}`);
  for (const li of await page.locator('#log li.error').allTextContents()) assert.fail(li);

  await page.click('#refresh');
  await page.waitForFunction(() => [...document.querySelectorAll('#log li')].some((li) => li.textContent.startsWith('refresh:')));
  await page.click('#call');
  await page.waitForFunction(() => !document.getElementById('call').disabled);
  assert.equal(await page.getAttribute('#status', 'data-last'), '200', await page.textContent('#log'));

  await page.click('#revoke');
  await page.waitForFunction(() => [...document.querySelectorAll('#log li')].some((li) => li.textContent === 'revoke session: 200'));
  const denied = await eventually(10000, async () => {
    await page.click('#call');
    await page.waitForFunction(() => !document.getElementById('call').disabled);
    return (await page.getAttribute('#status', 'data-last')) === '401';
  });
  assert.ok(denied, `no 401 after the revoke: ${await page.textContent('#log')}`);

  const texts = await rows.allTextContents();
  const first200 = texts.findIndex((t) => t.includes(`-> 200 sub=${user}`));
  const last401 = texts.findLastIndex((t) => t.includes('-> 401'));
  assert.ok(first200 >= 0 && last401 > first200, texts.join('\n'));
  assert.match(texts[last401], /revoked/);
  assert.deepEqual(errors, []);

  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `example-${alg}.png`);
  const png = await page.screenshot({ fullPage: true });
  writeFileSync(file, png);
  const image = decodePng(png);
  assert.ok(image.width >= 800 && image.height >= 300, `${image.width}x${image.height}`);
  // #1b8a2e: the 200 rows; #c62828: the 401 row.
  assert.ok(countColour(image, [0x1b, 0x8a, 0x2e]) > 2000, 'green 200 rows in the screenshot');
  assert.ok(countColour(image, [0xc6, 0x28, 0x28]) > 1000, 'red 401 row in the screenshot');
  await page.close();
});
