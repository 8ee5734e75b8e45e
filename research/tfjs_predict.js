// Runs a TF.js graph model on raw uint8 images in Node (research/tfjs.py calls it).
//   node tfjs_predict.js MODEL_DIR IMAGES.bin N H W OUT.bin
// IMAGES.bin: N*H*W*3 bytes; OUT.bin: the float32 probabilities, N*K of them.
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelDir, imagesPath, n, h, w, outPath] = process.argv.slice(2);
  const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, 'model.json')));
  const weightSpecs = [];
  const buffers = [];
  for (const group of manifest.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const file of group.paths) buffers.push(fs.readFileSync(path.join(modelDir, file)));
  }
  const weights = Buffer.concat(buffers);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: manifest.modelTopology,
    weightSpecs,
    weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.length),
    format: manifest.format,
    signature: manifest.signature,
    userDefinedMetadata: manifest.userDefinedMetadata,
  }));
  const raw = fs.readFileSync(imagesPath);
  const images = tf.tensor4d(Int32Array.from(raw), [+n, +h, +w, 3], 'int32');
  let out = await model.executeAsync(images);
  if (Array.isArray(out)) out = out[0];
  fs.writeFileSync(outPath, Buffer.from((await out.data()).buffer));
}

main().catch((e) => { console.error(String(e).split('\n')[0]); process.exit(1); });
