// The deploy workflow of ../../deploy.expected.md, with a `status` query
// and a `machines` update (how many machines to roll out to, 1 to 9).
import { handlerArg, print, respond, sleep, yieldStr, yieldStrTimeout } from "./wasnap";

const MAX_MACHINES = 9;
// Approve within 3 days, else the question goes to the release manager.
const APPROVAL_DEADLINE_MS: i64 = 3 * 24 * 60 * 60 * 1000;
// The maintenance window opens 2 s after the approval.
const MAINTENANCE_WINDOW_MS: i64 = 2000;

// Changed by `wasnap update ID machines --arg N`.
let machines = 3;
// Machines done so far.
let deployed = 0;
let status = "building release";

export function query_status(): void {
  respond(status + " (" + deployed.toString() + " of " + machines.toString() + " machines done)");
}

export function update_machines(): void {
  const n = I32.parseInt(handlerArg());
  const least = max(deployed, 1);
  if (isNaN(n) || n < least || n > MAX_MACHINES) {
    respond("refused: " + handlerArg() + " machines (at least " + least.toString()
      + ", at most " + MAX_MACHINES.toString() + ")");
    return;
  }
  machines = <i32>n;
  respond("machines = " + machines.toString());
}

function ask(question: string): string {
  status = question;
  return yieldStr(question);
}

export function run(): void {
  print("building release\n");
  status = "waiting for approval [yes/no]";
  let answer = yieldStrTimeout(status, APPROVAL_DEADLINE_MS);
  if (answer === null) {
    print("no answer within 3 days: escalating\n");
    answer = ask("waiting for approval from the release manager [yes/no]");
  }
  if (answer != "yes") {
    print("deployment not approved\n");
    return;
  }
  print("waiting for the maintenance window\n");
  status = "waiting for the maintenance window";
  sleep(MAINTENANCE_WINDOW_MS);
  for (let k = 1; k <= machines; k++) {
    if (ask("deploying to machine-" + k.toString()) == "fail") {
      // Machine k failed: undo the ones already done, newest first.
      for (let j = k - 1; j >= 1; j--) {
        deployed = j - 1;
        ask("rolling back machine-" + j.toString());
      }
      print("rolled back after machine-" + k.toString() + " failed\n");
      return;
    }
    deployed = k;
  }
  status = "deployed";
  print("deployed to " + machines.toString() + " machines\n");
}
