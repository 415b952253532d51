# The deploy workflow (../deploy.expected.md): build, wait for approval,
# roll out to three machines one step each, and when one fails, roll back
# the machines already done, in reverse. Each yield waits for a reply.
import wasnap


def deploy(machines):
    print("building release")
    if (yield "waiting for approval") != "yes":
        print("deployment not approved")
        return
    done = []
    for machine in machines:
        if (yield f"deploying to {machine}") == "fail":
            yield from roll_back(done)
            print(f"rolled back after {machine} failed")
            return
        done.append(machine)
    print(f"deployed to {len(done)} machines")


def roll_back(done):
    for machine in reversed(done):
        yield f"rolling back {machine}"


wasnap.run(deploy(["machine-1", "machine-2", "machine-3"]))
