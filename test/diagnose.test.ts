/**
 * Learner.diagnose() on real photos (flowers5 daisies and sunflowers): sunflowers filed as daisies come back as
 * likely mislabelled (out-of-fold heads), a validation photo copied from training is a near-duplicate, and the
 * top losses and calibration describe the validation rows; `graft train --json` carries them.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Learner } from '../src/learner.js';
import { graft } from './support/cli.js';
import { requireShared, SHARED } from './support/paths.js';

const [FLOWERS, MODEL] = requireShared(`${SHARED}/data/flowers5`, `${SHARED}/models/mobilenetv2-12-int8/model.onnx`);

describe('training diagnostics', () => {
  let tmp: string;
  let data: string;
  let flipped: string[];
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-diagnose-'));
    data = path.join(tmp, 'flowers');
    const files = async (cls: string) => (await readdir(path.join(FLOWERS, cls))).filter((f) => f.endsWith('.jpg')).sort();
    const daisies = await files('daisy');
    const sunflowers = await files('sunflower');
    const link = async (cls: string, name: string, split: string, as: string) => {
      await mkdir(path.join(data, split, as), { recursive: true });
      await symlink(path.join(FLOWERS, cls, name), path.join(data, split, as, name));
    };
    for (const [i, name] of daisies.slice(0, 90).entries()) await link('daisy', name, i < 60 ? 'train' : 'val', 'daisy');
    for (const [i, name] of sunflowers.slice(0, 90).entries()) await link('sunflower', name, i < 60 ? 'train' : 'val', 'sunflower');
    // Four sunflowers from far apart in the folder (not one photographer's series) filed under daisy.
    flipped = [150, 300, 450, 600].map((i) => sunflowers[i]!);
    for (const name of flipped) await link('sunflower', name, 'train', 'daisy');
    // A training photo copied into validation: leakage.
    await copyFile(path.join(FLOWERS, 'daisy', daisies[3]!), path.join(data, 'val', 'daisy', 'copy-of-train.jpg'));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  it('finds the sunflowers filed as daisies, the copied photo, and the worst validation rows', async () => {
    const learn = await Learner.create({ data, model: MODEL, cacheDir: path.join(tmp, 'cache') });
    try {
      await learn.fit();
      const d = await learn.diagnose();
      const suspects = d.mislabeled.map((m) => path.basename(m.file));
      const found = flipped.filter((f) => suspects.includes(f));
      assert.ok(found.length >= 3, `flipped ${flipped.join(', ')}; candidates ${suspects.join(', ')}`);
      for (const m of d.mislabeled.filter((x) => flipped.includes(path.basename(x.file)))) {
        assert.equal(m.given, 'daisy');
        assert.equal(m.suggested, 'sunflower');
        assert.ok(m.suggestedProbability > m.givenProbability);
      }
      assert.equal(d.nearDuplicates.length >= 1, true);
      assert.equal(path.basename(d.nearDuplicates[0]!.val.file), 'copy-of-train.jpg');
      assert.ok(d.nearDuplicates[0]!.cosine > 0.999);
      assert.ok(d.nearDuplicates[0]!.train.file.endsWith(path.join('train', 'daisy', (await readdir(path.join(FLOWERS, 'daisy'))).filter((f) => f.endsWith('.jpg')).sort()[3]!)));
      assert.ok(d.topLosses.length > 0 && d.topLosses.every((l, i) => i === 0 || l.loss <= d.topLosses[i - 1]!.loss));
      assert.ok(d.calibration.ece >= 0 && d.calibration.ece < 0.5);
      assert.deepEqual(Object.keys(d.calibration.perClass), ['daisy', 'sunflower']);
      assert.equal(d.calibration.bins.reduce((n, b) => n + b.count, 0), learn.data.valRows.length);
    } finally {
      await learn.close();
    }
  });

  it('graft train --json and metrics.json carry the diagnostics; stderr names what deserves a look', async () => {
    const out = path.join(tmp, 'out');
    const r = await graft(['train', data, '--model', MODEL, '--out', out, '--json'], { GRAFT_CACHE: path.join(tmp, 'cache'), HF_HUB_OFFLINE: '1' });
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { diagnostics: { mislabeled: unknown[]; nearDuplicates: unknown[]; confusedPairs: unknown[]; calibration: { ece: number } } };
    assert.ok(doc.diagnostics.mislabeled.length > 0 && doc.diagnostics.nearDuplicates.length > 0);
    assert.match(r.stderr, /calibration: expected calibration error \d\.\d{3}/);
    assert.match(r.stderr, /possibly mislabelled \(\d+ shown in metrics.json\), e\.g\. .*: given (daisy|sunflower), looks like (daisy|sunflower)\n/);
    assert.match(r.stderr, /warning: 1 validation sample nearly identical to training ones .*copy-of-train\.jpg/);
    const saved = JSON.parse(await readFile(path.join(out, 'metrics.json'), 'utf8')) as { diagnostics: unknown };
    assert.deepEqual(saved.diagnostics, doc.diagnostics);
    // The report shows them too, with thumbnails of the photos it names.
    const report = await readFile(path.join(out, 'report.html'), 'utf8');
    assert.match(report, /id="confusion"/);
    assert.match(report, /copy-of-train\.jpg/);
    assert.match(report, /<img [^>]*src="data:image\/jpeg;base64,/);
  });
});
