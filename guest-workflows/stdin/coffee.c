/*
 * A program for a terminal, not for wasnap: it asks two questions and
 * reads the answers with fgets. Under `wasnap run --stdin suspend` every
 * read of standard input suspends the workflow until `wasnap resume
 * --send ANSWER`, hours later if need be, in another process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a line into `line` without its newline; 0 at the end of the input. */
static int read_line(char *line, int size) {
    if (!fgets(line, size, stdin)) return 0;
    line[strcspn(line, "\n")] = '\0';
    return 1;
}

int main(void) {
    char name[100], cups[32];
    puts("What is your name?");
    if (!read_line(name, sizeof name)) {
        puts("No name, no coffee.");
        return 1;
    }
    printf("How many cups of coffee today, %s?\n", name);
    if (!read_line(cups, sizeof cups)) {
        puts("No answer, no coffee.");
        return 1;
    }
    int count = atoi(cups);
    printf("%s: %d cups, %s\n", name, count, count > 3 ? "that is plenty." : "have another.");
    return 0;
}
