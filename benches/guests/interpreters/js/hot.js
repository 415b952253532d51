// CPU-heavy interpreted code: object updates, string building and
// arithmetic, calling wasnap.yield every 2,000 iterations from inside the
// loop. The checksum depends only on the computation, never on the
// replies, so any two runs can be compared; the replies are counted and
// measured to show that each one arrived.
const ITERATIONS = Number(scriptArgs[0] ?? 100000);
const YIELD_EVERY = 2000;

const words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];
const counts = {};
const order = [];
let checksum = 0, replies = 0, replyBytes = 0, lastReply = "";

for (let i = 1; i <= ITERATIONS; i++) {
  const word = words[i % words.length];
  const key = word + "-" + (i % 101);
  let count = counts[key];
  if (count === undefined) {
    order.push(key);
    count = 0;
  }
  counts[key] = count + (i * 7) % 13;
  const mixed = Math.imul(i, 2654435761) >>> 0;
  checksum = (checksum * 31 + key.length + counts[key] + (mixed >>> 16)) % 1000000007;
  if (i % YIELD_EVERY === 0) {
    lastReply = wasnap.yield("progress " + i);
    replies++;
    replyBytes += lastReply.length;
  }
}

order.sort();
const summary = [];
for (let n = 0; n < order.length; n += 50) summary.push(order[n] + "=" + counts[order[n]]);
print(`checksum ${checksum} over ${order.length} keys: ${summary.join(" ")}`);
print(`${replies} replies, ${replyBytes} bytes, last ${JSON.stringify(lastReply)}`);
