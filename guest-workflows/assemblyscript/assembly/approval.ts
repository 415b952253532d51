// The article's approval workflow, with a `status` query.
import { respond, yieldStr } from "./wasnap";

// What the workflow waits for, for `wasnap query ID status`.
let status = "starting";

export function query_status(): void {
  respond(status);
}

function step(question: string): string {
  status = question;
  return yieldStr(question);
}

export function run(): void {
  step("do something");
  const isApproved = step("ask boss for permission") == "true";
  if (isApproved) {
    step("do another after approved");
  } else {
    step("do another after rejected");
  }
  status = "done";
}
