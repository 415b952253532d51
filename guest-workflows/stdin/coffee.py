# A program for a terminal, not for wasnap: it asks two questions with
# input(). Under `wasnap run --stdin suspend` every read of standard input
# suspends the workflow until `wasnap resume --send ANSWER`, hours later if
# need be, in another process.
import sys


def ask():
    try:
        name = input("What is your name?\n")
    except EOFError:
        return "No name, no coffee."
    try:
        count = int(input(f"How many cups of coffee today, {name}?\n"))
    except EOFError:
        return "No answer, no coffee."
    verdict = "that is plenty." if count > 3 else "have another."
    return f"{name}: {count} cups, {verdict}"


answer = ask()
print(answer)
sys.exit(1 if answer.startswith("No ") else 0)
