// The deploy workflow of ../../deploy.expected.md.
import { print, sleep, yieldStr, yieldStrTimeout } from "./wasnap";

const MACHINES = 3;
// Approve within 3 days, else the question goes to the release manager.
const APPROVAL_DEADLINE_MS: i64 = 3 * 24 * 60 * 60 * 1000;
// The maintenance window opens 2 s after the approval.
const MAINTENANCE_WINDOW_MS: i64 = 2000;

export function run(): void {
  print("building release\n");
  let answer = yieldStrTimeout("waiting for approval [yes/no]", APPROVAL_DEADLINE_MS);
  if (answer === null) {
    print("no answer within 3 days: escalating\n");
    answer = yieldStr("waiting for approval from the release manager [yes/no]");
  }
  if (answer != "yes") {
    print("deployment not approved\n");
    return;
  }
  print("waiting for the maintenance window\n");
  sleep(MAINTENANCE_WINDOW_MS);
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
