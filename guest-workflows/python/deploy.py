# The deploy workflow (../deploy.expected.md): build, wait for approval
# (3 days, then the release manager decides), wait for the maintenance
# window, roll out to the machines one step each, and when one fails,
# roll back the machines already done, in reverse. While it waits,
# `wasnap query ID status` says where it is and `wasnap update ID machines
# --arg N` changes how many machines it rolls out to.
import wasnap

APPROVAL_DEADLINE = 3 * 24 * 60 * 60  # seconds
MAINTENANCE_WINDOW = 2  # seconds after the approval
MAX_MACHINES = 9

machines = 3
deployed = 0  # machines done so far
state = "building release"  # what it waits for, or did last


@wasnap.query
def status(arg):
    return f"{state} ({deployed} of {machines} machines done)"


def set_machines(arg):
    global machines
    least = max(deployed, 1)
    try:
        n = int(arg)
    except ValueError:
        n = 0
    if not least <= n <= MAX_MACHINES:
        return f"refused: {arg} machines (at least {least}, at most {MAX_MACHINES})"
    machines = n
    return f"machines = {n}"


wasnap.update("machines", set_machines)


def ask(question, **timeout):
    global state
    state = question
    return wasnap.yield_(question, **timeout)


def approved():
    answer = ask("waiting for approval [yes/no]", timeout=APPROVAL_DEADLINE)
    if answer is None:
        print("no answer within 3 days: escalating")
        answer = ask("waiting for approval from the release manager [yes/no]")
    return answer == "yes"


def deploy():
    global deployed, state
    print("building release")
    if not approved():
        print("deployment not approved")
        return
    print("waiting for the maintenance window")
    state = "waiting for the maintenance window"
    wasnap.sleep(MAINTENANCE_WINDOW)
    k = 1
    while k <= machines:
        if ask(f"deploying to machine-{k}") == "fail":
            for j in range(k - 1, 0, -1):
                deployed = j - 1
                ask(f"rolling back machine-{j}")
            print(f"rolled back after machine-{k} failed")
            return
        deployed = k
        k += 1
    state = "deployed"
    print(f"deployed to {machines} machines")


deploy()
