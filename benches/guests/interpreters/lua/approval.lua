-- The approval workflow: the reply to the second yield decides the third.
wasnap.yield("do something")
local approved = wasnap.yield("ask boss for permission") == "true"
if approved then
  wasnap.yield("do another after approved")
else
  wasnap.yield("do another after rejected")
end
