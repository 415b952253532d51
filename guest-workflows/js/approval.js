// The article's approval workflow in JavaScript: a function that asks, and
// waits, hours or days, for the boss's answer. Every wasnap.yield suspends
// the whole interpreter, this function's frame with it; the reply it is
// resumed with is what wasnap.yield returns.
//
//   wasnap run approval.js           # do something
//   wasnap resume 1                  # ask boss for permission
//   wasnap resume 1 --send true      # do another after approved

function workflow() {
  wasnap.yield("do something");
  const isApproved = wasnap.yield("ask boss for permission") === "true";
  if (isApproved) {
    wasnap.yield("do another after approved");
  } else {
    wasnap.yield("do another after rejected");
  }
}

workflow();
