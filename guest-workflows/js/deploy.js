// The deploy workflow (../deploy.expected.md): build, wait for approval,
// roll out to three machines one step each, and when one fails, roll back
// the machines already done, in reverse.

function deploy(machines) {
  print("building release");
  if (wasnap.yield("waiting for approval") !== "yes") {
    print("deployment not approved");
    return;
  }
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
