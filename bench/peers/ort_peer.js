// onnxruntime's contender in bench/peers/peers.py (its CPU provider through the
// Node.js binding of onnxruntime-node):
//   node ort_peer.js MODEL.onnx X.npy Y.npy THREADS
// checks the output on X against PyTorch's Y, prints seconds per call in steady
// state and, on stderr, the session's creation time.
'use strict';
const fs = require('fs');
const ort = require(process.env.KILN_ORT_MODULE || 'onnxruntime-node');

function readNpy(path) { // v1/v2, little-endian f32, C order: what peers.py writes
  const b = fs.readFileSync(path);
  const major = b[6], hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8), start = (major === 1 ? 10 : 12) + hlen;
  const header = b.toString('latin1', major === 1 ? 10 : 12, start);
  if (!header.includes("'<f4'")) throw new Error(path + ': not little-endian float32');
  const shape = header.match(/\(([^)]*)\)/)[1].split(',').map(s => s.trim()).filter(s => s).map(Number);
  const data = new Float32Array(b.buffer.slice(b.byteOffset + start, b.byteOffset + b.length));
  return { shape, data };
}

async function main() {
  const [model, xpath, ypath, threads] = process.argv.slice(2);
  const x = readNpy(xpath), want = readNpy(ypath);
  const t0 = process.hrtime.bigint();
  const s = await ort.InferenceSession.create(model, {
    executionProviders: ['cpu'], intraOpNumThreads: Number(threads), interOpNumThreads: 1,
    graphOptimizationLevel: 'all', executionMode: 'sequential',
  });
  const feeds = { [s.inputNames[0]]: new ort.Tensor('float32', x.data, x.shape) };
  let out = (await s.run(feeds))[s.outputNames[0]].data;
  process.stderr.write(`session+first run ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms\n`);
  let maxdiff = 0, maxabs = 1e-30;
  for (let i = 0; i < want.data.length; i++) {
    maxdiff = Math.max(maxdiff, Math.abs(out[i] - want.data[i]));
    maxabs = Math.max(maxabs, Math.abs(want.data[i]));
  }
  if (out.length !== want.data.length || maxdiff / maxabs > 1e-3) {
    process.stderr.write(`ort_peer: ${model}: off PyTorch's output by ${maxdiff / maxabs}\n`);
    process.exit(1);
  }
  // as bench_util.h's bench_time: calls filling ~30 ms, median of 5 blocks
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const a = process.hrtime.bigint();
    await s.run(feeds);
    best = Math.min(best, Number(process.hrtime.bigint() - a) / 1e9);
  }
  const reps = Math.min(100000, Math.floor(0.03 / (best + 1e-9)) + 1), t = [];
  for (let blk = 0; blk < 5; blk++) {
    const a = process.hrtime.bigint();
    for (let k = 0; k < reps; k++) await s.run(feeds);
    t.push(Number(process.hrtime.bigint() - a) / 1e9 / reps);
  }
  t.sort((p, q) => p - q);
  console.log(t[2].toExponential(9));
}
main().catch(e => { process.stderr.write(`ort_peer: ${e.message}\n`); process.exit(1); });
