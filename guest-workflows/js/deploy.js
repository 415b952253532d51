// The deploy workflow (../deploy.expected.md): build, wait for approval
// (3 days, then the release manager decides), wait for the maintenance
// window, roll out to three machines one step each, and when one fails,
// roll back the machines already done, in reverse.

const APPROVAL_DEADLINE = 3 * 24 * 60 * 60 * 1000; // ms
const MAINTENANCE_WINDOW = 2000; // ms after the approval

function approved() {
  let answer = wasnap.yield("waiting for approval [yes/no]", APPROVAL_DEADLINE);
  if (answer === null) {
    print("no answer within 3 days: escalating");
    answer = wasnap.yield("waiting for approval from the release manager [yes/no]");
  }
  return answer === "yes";
}

function deploy(machines) {
  print("building release");
  if (!approved()) {
    print("deployment not approved");
    return;
  }
  print("waiting for the maintenance window");
  wasnap.sleep(MAINTENANCE_WINDOW);
  const done = [];
  for (const machine of machines) {
    if (wasnap.yield(`deploying to ${machine}`) === "fail") {
      rollBack(done);
      print(`rolled back after ${machine} failed`);
      return;
    }
    done.push(machine);
  }
  print(`deployed to ${done.length} machines`);
}

function rollBack(done) {
  for (const machine of done.reverse()) {
    wasnap.yield(`rolling back ${machine}`);
  }
}

deploy(["machine-1", "machine-2", "machine-3"]);
