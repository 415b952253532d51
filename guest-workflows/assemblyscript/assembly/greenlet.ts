// The article's greenlet demo: run is f, g is a coroutine with its own stack.
import { print, spawn, stackAlloc, stackRestore, stackSave, suspend, switchToParent } from "./wasnap";

// The engine sets the shadow-stack pointer of each coroutine by this name.
export { __stack_pointer } from "./wasnap";

// "special-g-stack" with every character shifted up by one: the text itself
// must exist only where g builds it, on its own stack, never in a data
// segment (the host looks for it in the snapshot to see that g's stack was
// saved).
const SHIFTED = "tqfdjbm.h.tubdl";

function g(): void {
  print("enter g\n");
  const frame = stackSave();
  const mystack = stackAlloc(16);
  for (let i = 0; i < SHIFTED.length; i++) {
    store<u8>(mystack + i, <u8>(SHIFTED.charCodeAt(i) - 1));
  }
  store<u8>(mystack + SHIFTED.length, 0);
  switchToParent(0);
  for (let i = 0; i < SHIFTED.length; i++) {
    if (load<u8>(mystack + i) != <u8>(SHIFTED.charCodeAt(i) - 1)) {
      abort("g's stack did not survive the switch");
    }
  }
  print("leave g\n");
  stackRestore(frame);
}

export function run(): void {
  const greenletG = spawn(g, 16 * 1024);
  greenletG.switchInto(0);
  suspend(); // root.switch()
  print("a\n");
  greenletG.switchInto(0);
  suspend();
  print("b\n");
  suspend();
  print("c\n");
}
