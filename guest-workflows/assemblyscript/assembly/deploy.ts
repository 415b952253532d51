// The deploy workflow of ../../deploy.expected.md.
import { print, yieldStr } from "./wasnap";

const MACHINES = 3;

export function run(): void {
  print("building release\n");
  if (yieldStr("waiting for approval") != "yes") {
    print("deployment not approved\n");
    return;
  }
  for (let k = 1; k <= MACHINES; k++) {
    if (yieldStr("deploying to machine-" + k.toString()) == "fail") {
      // Machine k failed: undo the ones already done, newest first.
      for (let j = k - 1; j >= 1; j--) {
        yieldStr("rolling back machine-" + j.toString());
      }
      print("rolled back after machine-" + k.toString() + " failed\n");
      return;
    }
  }
  print("deployed to " + MACHINES.toString() + " machines\n");
}
