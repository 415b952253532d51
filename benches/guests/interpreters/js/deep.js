// Deep recursion, suspending at the bottom: QuickJS runs each JavaScript
// call in a nested call of its C interpreter, so the Wasm stack grows with
// every level.
const DEPTH = Number(scriptArgs[0] ?? 2000);
let reply;

function sum(n) {
  if (n === 0) {
    reply = wasnap.yield(`bottom of ${DEPTH} levels`);
    return 0;
  }
  return n + sum(n - 1);
}

print(`sum of 1..${DEPTH} = ${sum(DEPTH)}`);
print(`reply ${JSON.stringify(reply)}`);
