// The deploy workflow (../deploy.expected.md): build, wait for approval
// (3 days, then the release manager decides), wait for the maintenance
// window, roll out to the machines one step each, and when one fails,
// roll back the machines already done, in reverse. While it waits,
// `wasnap query ID status` says where it is and `wasnap update ID machines
// --arg N` changes how many machines it rolls out to.

const APPROVAL_DEADLINE = 3 * 24 * 60 * 60 * 1000; // ms
const MAINTENANCE_WINDOW = 2000; // ms after the approval
const MAX_MACHINES = 9;

let machines = 3;
let deployed = 0; // machines done so far
let status = "building release";

wasnap.query("status", () => `${status} (${deployed} of ${machines} machines done)`);

wasnap.update("machines", (arg) => {
  const n = Number.parseInt(arg, 10);
  if (!(n >= Math.max(deployed, 1) && n <= MAX_MACHINES)) {
    return `refused: ${arg} machines (at least ${Math.max(deployed, 1)}, at most ${MAX_MACHINES})`;
  }
  machines = n;
  return `machines = ${n}`;
});

function ask(question, timeoutMs) {
  status = question;
  return timeoutMs === undefined ? wasnap.yield(question) : wasnap.yield(question, timeoutMs);
}

function approved() {
  let answer = ask("waiting for approval [yes/no]", APPROVAL_DEADLINE);
  if (answer === null) {
    print("no answer within 3 days: escalating");
    answer = ask("waiting for approval from the release manager [yes/no]");
  }
  return answer === "yes";
}

function deploy() {
  print("building release");
  if (!approved()) {
    print("deployment not approved");
    return;
  }
  print("waiting for the maintenance window");
  status = "waiting for the maintenance window";
  wasnap.sleep(MAINTENANCE_WINDOW);
  for (let k = 1; k <= machines; k++) {
    if (ask(`deploying to machine-${k}`) === "fail") {
      rollBack(k - 1);
      print(`rolled back after machine-${k} failed`);
      return;
    }
    deployed = k;
  }
  status = "deployed";
  print(`deployed to ${machines} machines`);
}

// Undoes machines `done` down to 1, newest first.
function rollBack(done) {
  for (let j = done; j >= 1; j--) {
    deployed = j - 1;
    ask(`rolling back machine-${j}`);
  }
}

deploy();
