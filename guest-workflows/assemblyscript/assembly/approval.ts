// The article's approval workflow.
import { yieldStr } from "./wasnap";

export function run(): void {
  yieldStr("do something");
  const isApproved = yieldStr("ask boss for permission") == "true";
  if (isApproved) {
    yieldStr("do another after approved");
  } else {
    yieldStr("do another after rejected");
  }
}
