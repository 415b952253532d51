# The article's approval workflow, word for word: a generator that yields
# each step and receives the boss's answer. wasnap.run is the host side of
# the article: next(), then, hours later and in another process,
# send(True) (`wasnap resume 1 --send true`).
import wasnap


def workflow():
    yield "do something"
    is_approved = yield "ask boss for permission"
    if is_approved:
        yield "do another after approved"
    else:
        yield "do another after rejected"


wasnap.run(workflow())
