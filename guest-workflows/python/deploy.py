# The deploy workflow (../deploy.expected.md): build, wait for approval
# (3 days, then the release manager decides), wait for the maintenance
# window, roll out to three machines one step each, and when one fails,
# roll back the machines already done, in reverse.
import wasnap

APPROVAL_DEADLINE = 3 * 24 * 60 * 60  # seconds
MAINTENANCE_WINDOW = 2  # seconds after the approval


def approved():
    answer = wasnap.yield_("waiting for approval [yes/no]", timeout=APPROVAL_DEADLINE)
    if answer is None:
        print("no answer within 3 days: escalating")
        answer = wasnap.yield_("waiting for approval from the release manager [yes/no]")
    return answer == "yes"


def deploy(machines):
    print("building release")
    if not approved():
        print("deployment not approved")
        return
    print("waiting for the maintenance window")
    wasnap.sleep(MAINTENANCE_WINDOW)
    done = []
    for machine in machines:
        if wasnap.yield_(f"deploying to {machine}") == "fail":
            for finished in reversed(done):
                wasnap.yield_(f"rolling back {finished}")
            print(f"rolled back after {machine} failed")
            return
        done.append(machine)
    print(f"deployed to {len(done)} machines")


deploy(["machine-1", "machine-2", "machine-3"])
